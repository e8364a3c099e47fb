"""load_dataset and build_model: embedded sets, CSV, npz, image folders, splits, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from steepest.train import DATASETS, build_model, load_dataset


@pytest.mark.parametrize("name", DATASETS)
def test_embedded_datasets_load_split_and_standardize(name: str) -> None:
    data = load_dataset(name)
    sizes = [len(part[1]) for part in (data.train, data.val, data.test)]
    total = sum(sizes)
    assert sizes[2] == pytest.approx(0.2 * total, abs=1) and sizes[1] == pytest.approx(0.1 * total, abs=1)
    assert data.train[0].shape[1:] == data.input_shape
    assert abs(float(data.train[0].mean())) < 1e-4
    if name in ("diabetes", "synthetic_regression"):
        assert data.task == "regression" and data.num_classes is None
        assert data.train[1].dtype == torch.float32
    else:
        assert data.task == "classification" and data.num_classes == int(data.train[1].max()) + 1
    model = build_model("mlp", data)
    outputs = model(data.val[0])
    assert outputs.shape == ((len(data.val[1]), data.num_classes) if data.num_classes else data.val[1].shape)


def test_csv_with_named_label_column_and_stratified_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["a,kind,b"]
    for index in range(100):
        kind = "cat" if index % 4 == 0 else "dog"  # 25 cats, 75 dogs
        rows.append(f"{rng.normal():.4f},{kind},{rng.normal():.4f}")
    path = tmp_path / "pets.csv"
    path.write_text("\n".join(rows) + "\n")
    data = load_dataset(path, label="kind", val_fraction=0.2, test_fraction=0.2)
    assert data.task == "classification" and data.class_names == ("cat", "dog")
    assert data.feature_names == ("a", "b") and data.input_shape == (2,)
    assert [len(part[1]) for part in (data.train, data.val, data.test)] == [60, 20, 20]
    for part in (data.train, data.val, data.test):  # stratified: a quarter cats everywhere
        assert float((part[1] == 0).float().mean()) == pytest.approx(0.25)


def test_csv_default_label_is_last_column_and_regression_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    values = np.random.default_rng(1).normal(size=(50, 3))
    np.savetxt(path, values, delimiter=",", header="x1,x2,target", comments="")
    data = load_dataset(path, val_fraction=0.0)
    assert data.task == "regression" and data.input_shape == (2,) and len(data.val[1]) == 0
    all_targets = torch.cat([data.train[1], data.test[1]]) * data.target_std + data.target_mean
    assert torch.allclose(
        all_targets.sort().values, torch.tensor(np.sort(values[:, 2]), dtype=torch.float32), atol=1e-4
    )


def test_npz_keeps_the_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.random.default_rng(2).normal(size=(60, 1, 4, 4)), y=np.repeat([0, 1, 2], 20))
    data = load_dataset(path)
    assert data.input_shape == (1, 4, 4) and data.num_classes == 3
    assert sum(len(part[1]) for part in (data.train, data.val, data.test)) == 60
    assert build_model("cnn", data)(data.train[0][:2]).shape == (2, 3)


def test_image_folder_is_read_resized_and_split(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / label).mkdir()
        for index in range(10):
            Image.new("RGB", (12 + index, 9), color).save(tmp_path / label / f"{index}.png")
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path, image_size=8, val_fraction=0.2, test_fraction=0.2)
    assert data.class_names == ("blue", "red") and data.input_shape == (3, 8, 8)
    assert [len(part[1]) for part in (data.train, data.val, data.test)] == [12, 4, 4]
    for part in (data.train, data.val, data.test):
        assert int((part[1] == 0).sum()) * 2 == len(part[1])  # stratified
    # Red images have a high red channel, blue ones a low one (after standardization too).
    red = data.train[0][data.train[1] == 1]
    blue = data.train[0][data.train[1] == 0]
    assert float(red[:, 0].mean()) > float(blue[:, 0].mean())
    gray = load_dataset(tmp_path, image_size=(6, 4), grayscale=True)
    assert gray.input_shape == (1, 4, 6)


def test_user_module_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_nets.py").write_text(
        "import torch\nclass Net(torch.nn.Linear):\n"
        "    def __init__(self):\n        super().__init__(13, 3)\n"
        "def make():\n    return 5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset("wine")
    assert isinstance(build_model("my_nets:Net", data), torch.nn.Linear)
    with pytest.raises(TypeError, match="my_nets:make"):
        build_model("my_nets:make", data)
    with pytest.raises(ValueError, match="my_nets:Missing"):
        build_model("my_nets:Missing", data)
    with pytest.raises(ValueError, match="no_such_module"):
        build_model("no_such_module:Net", data)
    sys.modules.pop("my_nets", None)


def test_bad_input_raises_naming_argument_and_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name_or_path='mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="missing.csv"):
        load_dataset(tmp_path / "missing.csv")
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6\n")
    with pytest.raises(ValueError, match="label='c'"):
        load_dataset(path, label="c")
    path.write_text("a,b,c\n1,x,0\n3,y,1\n5,z,0\n")
    with pytest.raises(ValueError, match="must be numbers"):
        load_dataset(path)
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        load_dataset("wine", val_fraction=1.5)
    with pytest.raises(ValueError, match="task='clustering'"):
        load_dataset("wine", task="clustering")
    with pytest.raises(ValueError, match="name='transformer'"):
        build_model("transformer", load_dataset("wine"))
    with pytest.raises(ValueError, match="cnn"):
        build_model("cnn", load_dataset("wine"))
