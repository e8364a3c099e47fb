"""steepest.train.report: a self-contained HTML report of one run, or several overlaid."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from steepest.train.config import ConfigError
from steepest.train.report import load_run, make_plots, report_main, summary_rows, write_report
from steepest.train.runs import create_run_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(runs_dir: Path, name: str, lr: float, steps: int = 40, regime: bool = False,
             stopped_by: str | None = "max_steps") -> Path:
    """A run folder with a config and a hand-written metrics.jsonl (4 epochs of 10 steps)."""
    folder = create_run_folder(runs_dir, name, {"optimizer": "sgd", "lr": lr, "epochs": 4, "clip_norm": 5.0})
    lines = []
    for step in range(1, steps + 1):
        line = {"step": step, "epoch": (step - 1) // 10 + 1, "loss": 2.0 / step, "lr": lr,
                "grad_norm": 10.0 - step / 10, "clipped": step <= 5, "examples_per_second": 500.0,
                "elapsed": step * 0.1}
        if regime:
            line["regime"] = "too_large" if step <= 10 else "good"
            line["advice"] = "lower the learning rate 3x" if step <= 10 else "keep it"
            line["update_ratio"] = 1e-3 * step  # a diagnostic the report has never heard of
            if step in (8, 10):
                line["safety"] = f"backoff: learning rate too large at step {step}; cut x0.1"
        lines.append(line)
        if step % 10 == 0:
            lines.append({"kind": "eval", "step": step, "epoch": step // 10, "elapsed": step * 0.1,
                          "val_loss": 1.0 / step + lr, "val_accuracy": 0.6 + step / 200})
    if stopped_by:
        lines.append({"kind": "end", "step": steps, "stopped_by": stopped_by, "elapsed": 4.25})
    folder.metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder.path


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    # every src= and href= is an inline data URI
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert references and all(ref.startswith("data:") for ref in references)
    assert "<link" not in page.lower() and "@import" not in page


def test_one_run_report_has_plots_and_summary(tmp_path: Path) -> None:
    run = make_run(tmp_path, "sgd-0.1", 0.1)
    assert report_main([str(run)], None) == 0
    page = (run / "report.html").read_text()
    assert_self_contained(page)
    pngs = embedded_pngs(page)
    assert len(pngs) == 4  # loss, accuracy, learning rate, gradient norm (no regime in this run)
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    for caption in ("Training and validation loss", "Accuracy", "Learning-rate schedule as run",
                    "Gradient norms and clipping"):
        assert caption in page
    # the summary table: one header row and one row for the run
    assert page.count("<tr>") == 2
    assert "<td>sgd-0.1</td>" in page
    assert "<td>0.125</td>" in page  # best and final val_loss: 1/40 + 0.1
    assert "<td>80.00%</td>" in page  # best and final val_accuracy 0.6 + 40/200
    assert "<td>max_steps</td>" in page and "<td>4.2 s</td>" in page
    # single run: the plots are also saved as PNG files beside the report
    assert sorted(path.name for path in run.glob("*.png")) == ["accuracy.png", "grad_norm.png", "loss.png",
                                                               "lr.png"]


def test_summary_values(tmp_path: Path) -> None:
    headers, rows = summary_rows([load_run(make_run(tmp_path, "a", 0.1))])
    row = dict(zip(headers, rows[0]))
    assert row["run"] == "a" and row["optimizer"] == "sgd" and row["lr"] == "0.1"
    assert row["steps"] == "40" and row["epochs run"] == "4"
    assert row["best val_loss"] == "0.125" and row["final val_loss"] == "0.125"  # 1/40 + 0.1
    assert row["best val_accuracy"] == "80.00%"
    assert row["final train loss"] == "0.05"
    assert "regimes" not in row  # no run has a regime: no empty column
    assert "safety events" not in row  # nor a safety event


def test_two_runs_are_overlaid_with_one_row_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [str(make_run(tmp_path, "sgd-0.1", 0.1)), str(make_run(tmp_path, "sgd-0.01", 0.01))]
    monkeypatch.chdir(tmp_path)
    assert report_main(runs, None) == 0
    page = (tmp_path / "report.html").read_text()  # several runs: report.html in the current folder
    assert_self_contained(page)
    assert page.count("<tr>") == 3
    assert "<td>sgd-0.1</td>" in page and "<td>sgd-0.01</td>" in page
    # the loss plot overlays both runs: one train line and one val line per run
    figures = make_plots([load_run(path) for path in runs])
    loss_axes = figures["loss"].axes[0]
    assert [text.get_text() for text in loss_axes.get_legend().get_texts()] == [
        "sgd-0.1 train", "sgd-0.1 val", "sgd-0.01 train", "sgd-0.01 val"
    ]
    assert len(figures["lr"].axes[0].get_lines()) == 2
    assert not list(Path(runs[0]).glob("*.png"))  # a comparison writes into no run folder


def test_a_report_written_elsewhere_leaves_the_files_beside_it_alone(tmp_path: Path) -> None:
    # `steepest report RUN -o mine.html` wrote loss.png, lr.png, ... beside mine.html, and
    # replaced the lr.png that `steepest schedule plot ... -o lr.png` had drawn there.
    run = make_run(tmp_path, "a", 0.1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "lr.png").write_bytes(b"the user's own picture")
    assert report_main([str(run)], str(elsewhere / "mine.html")) == 0
    assert sorted(path.name for path in elsewhere.iterdir()) == ["lr.png", "mine.html"]
    assert (elsewhere / "lr.png").read_bytes() == b"the user's own picture"
    assert_self_contained((elsewhere / "mine.html").read_text())
    assert not list(run.glob("*.png"))  # nor into the run folder: it was not asked for


def test_regime_strip_extra_fields_and_advice(tmp_path: Path) -> None:
    run = make_run(tmp_path, "diagnosed", 0.1, regime=True)
    figures = make_plots([load_run(run)])
    assert "regime" in figures and "extra_update_ratio" in figures
    strip = figures["regime"].axes[0]
    assert len(strip.collections) == 2  # two spans: too_large for steps 1-10, then good
    legend = [text.get_text() for text in strip.get_legend().get_texts()]
    assert legend == ["too_large", "good"]
    page = write_report([run], tmp_path / "out.html").read_text()
    assert "Learning-rate regime" in page and "update_ratio" in page
    assert "too_large 25%, good 75%" in page
    assert "<td>keep it</td>" in page  # the last advice
    assert "<td>backoff x2</td>" in page  # what the safe-step guard did


def test_gradient_norm_plot_marks_clipping(tmp_path: Path) -> None:
    figures = make_plots([load_run(make_run(tmp_path, "a", 0.1))])
    labels = [text.get_text() for text in figures["grad_norm"].axes[0].get_legend().get_texts()]
    assert labels == ["a", "a clipped (5 steps)"]


def test_not_a_run_folder_is_a_config_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, "ok", 0.1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty is not a run folder: it has no metrics.jsonl"):
        report_main([str(run), str(tmp_path / "empty")], str(tmp_path / "x.html"))
    assert not (tmp_path / "x.html").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        report_main([str(tmp_path / "missing")], None)


def test_html_escapes_run_labels(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", 0.1)
    (run / "config.toml").write_text('label = "<b>bold</b>"\n')
    page = write_report([run], tmp_path / "out.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page


def test_the_latest_advice_is_the_latest_windows_verdict(tmp_path: Path) -> None:
    # A run logged before good windows carried advice: the last advice, at step 10, said
    # "lower the learning rate 3x", and the report showed it though every later window was good.
    run = make_run(tmp_path, "old", 0.1, regime=True)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if line.get("step", 0) > 10:
            line.pop("advice", None)
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    page = write_report([run], tmp_path / "out.html").read_text()
    assert "<td>good from step 11 on (step 10: lower the learning rate 3x)</td>" in page
    # every window's advice logged, the good ones too: the latest is shown as it is
    page = write_report([make_run(tmp_path, "new", 0.1, regime=True)], tmp_path / "new.html").read_text()
    assert "<td>keep it</td>" in page


def test_an_lr_auto_run_shows_the_method_and_rate_that_ran(tmp_path: Path) -> None:
    run = make_run(tmp_path, "auto", 10.0)
    (run / "config.toml").write_text('optimizer = "sgd"\nlr = "auto"\nepochs = 4\n')
    choice = {"lr": 10.0, "method": "MoMo", "options": {"beta": 0.9}, "policy": "lr_free",
              "reason": "MoMo with lr=10: the model has more parameters than examples", "evaluations": 0}
    (run / "lr_choice.json").write_text(json.dumps(choice))
    page = write_report([run], tmp_path / "out.html").read_text()
    # it said optimizer sgd, lr auto, though MoMo ran with lr 10
    assert "<td>MoMo (auto, for sgd)</td>" in page and "<td>10 (auto)</td>" in page
    assert "<td>0 evaluations (lr_free)</td>" in page
    assert "MoMo at lr 10, 0 evaluations (lr_free): MoMo with lr=10: the model has more" in page
    # a file it cannot read leaves the configuration as it is, and the report still written
    (run / "lr_choice.json").write_text("{damaged")
    page = write_report([run], tmp_path / "out.html").read_text()
    assert "<td>sgd</td>" in page and "<td>auto</td>" in page and "lr = auto" not in page
