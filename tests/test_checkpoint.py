"""Checkpoints: exact resume after SIGKILL, corruption detection, safety, rotation, atomicity."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from steepest.train import checkpoint as checkpoints
from steepest.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# A small run: an MLP with dropout (so the global generator matters), AdamW on a cosine
# schedule, shuffled batches, numpy and Python random drawn by a callback (so their states
# matter too), a checkpoint after every step. It prints "started" once training begins.
RUN_SCRIPT = """
import random, sys
import numpy as np
import torch
torch.set_num_threads(1)
from steepest import schedules, stopping
from steepest.train import fit

out, folder = sys.argv[1], sys.argv[2]
generator = torch.Generator().manual_seed(123)
X = torch.randn(240, 8, generator=generator)
y = (X[:, 0] + X[:, 1] > 0).long()

class Noisy:
    name = "noisy"
    def __init__(self):
        self.total = 0.0
    def on_fit_start(self, trainer):
        print("started", flush=True)
    def on_step_end(self, trainer, record):
        self.total += random.random() + float(np.random.rand())
    def state_dict(self):
        return {"total": self.total}
    def load_state_dict(self, state):
        self.total = state["total"]

torch.manual_seed(0)
nn = torch.nn
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
noisy = Noisy()
result = fit(model, (X, y), "cross_entropy", "adamw", lr=schedules.cosine(peak=1e-2, total=300),
             epochs=20, batch_size=16, val_data=(X[:64], y[:64]), eval_every=7,
             stopping=stopping.patience(1000, restore_best=False), callbacks=[noisy],
             checkpoint_dir=folder, checkpoint_every=1, keep_last=2, resume=True)
torch.save({"params": [p.detach().clone() for p in model.parameters()], "steps": result.steps,
            "noisy": noisy.total, "history": len(result.history)}, out)
"""


def _launch(script: Path, out: Path, folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(folder)], stdout=subprocess.PIPE, env=env, text=True
    )


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)

    reference = _launch(script, tmp_path / "reference.pt", tmp_path / "reference_checkpoints")
    assert reference.wait(timeout=120) == 0
    expected = torch.load(tmp_path / "reference.pt", weights_only=True)

    chooser = random.Random(os.getpid())  # random moments; the seed is printed on failure
    seed_note = f"kill-delay seed {os.getpid()}"
    folder, out = tmp_path / "killed_checkpoints", tmp_path / "killed.pt"
    kills = 0
    for _ in range(3):
        process = _launch(script, out, folder)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "started", seed_note
        time.sleep(chooser.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        if process.wait(timeout=60) == -signal.SIGKILL:
            kills += 1
    assert kills >= 1, f"no run was interrupted; the script finished too fast ({seed_note})"
    assert checkpoints.list_checkpoints(folder), "the killed runs left no checkpoint"

    final = _launch(script, out, folder)
    assert final.wait(timeout=120) == 0
    resumed = torch.load(out, weights_only=True)
    assert resumed["steps"] == expected["steps"] == 300
    assert resumed["history"] == expected["history"]
    assert resumed["noisy"] == expected["noisy"], seed_note
    for got, want in zip(resumed["params"], expected["params"], strict=True):
        assert torch.equal(got, want), seed_note


def test_save_and_load_round_trip_with_checksum(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 5, "names": ["a", "b"], "x": None}
    path = save_checkpoint(state, tmp_path, step=5)
    assert path.name == "step-000005.pt"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["step"] == 5 and loaded["names"] == ["a", "b"]


def test_truncated_checkpoint_falls_back_to_previous_with_warning(tmp_path: Path) -> None:
    save_checkpoint({"step": 1, "w": torch.ones(1000)}, tmp_path, step=1)
    newest = save_checkpoint({"step": 2, "w": torch.ones(1000)}, tmp_path, step=2)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="step-000002.pt"):
        found = latest_checkpoint(tmp_path)
    assert found is not None and found[0].name == "step-000001.pt" and found[1]["step"] == 1


def test_corrupted_bytes_are_caught_by_the_checksum(tmp_path: Path) -> None:
    path = save_checkpoint({"w": torch.zeros(4096)}, tmp_path, step=1)
    data = bytearray(path.read_bytes())
    # Flip a byte inside the stored tensor's data: a zip torch still reads, with a wrong value.
    position = data.find(bytes(64)) + 32
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


class _Exploit:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_crafted_to_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save_checkpoint({"step": 1}, tmp_path, step=1)
    evil = checkpoints.checkpoint_path(tmp_path, 2)
    torch.save({"format": checkpoints.FORMAT, "checksum": "x", "state": {"x": _Exploit(str(marker))}}, evil)
    # The crafted file really runs code when unpickled without weights_only.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="step-000002.pt"):
        load_checkpoint(evil)
    with pytest.warns(UserWarning, match="step-000002.pt"):
        found = latest_checkpoint(tmp_path)
    assert found is not None and found[0].name == "step-000001.pt"
    assert not marker.exists()
    # A plain pickle is refused too.
    evil.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


def test_keep_last_keeps_the_newest_files(tmp_path: Path) -> None:
    for step in range(1, 7):
        save_checkpoint({"step": step}, tmp_path, step=step, keep_last=2)
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["step-000005.pt", "step-000006.pt"]


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint({"step": 1}, tmp_path, step=1)
    real_save = torch.save

    def save_half_then_fail(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.truncate(10)
        raise KeyboardInterrupt  # the process is interrupted in the middle of the write

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, tmp_path, step=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001.pt"]
    assert load_checkpoint(tmp_path / "step-000001.pt")["step"] == 1


def test_rng_states_round_trip() -> None:
    import numpy as np

    generator = torch.Generator().manual_seed(3)
    states = checkpoints.capture_rng_states(generator)
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=generator))
    checkpoints.restore_rng_states(states, generator)
    second = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=generator))
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all()
    assert first[2] == second[2] and torch.equal(first[3], second[3])
