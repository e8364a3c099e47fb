"""``steepest report``: one self-contained HTML page about one run, or comparing several.

The page needs nothing but itself: CSS is inline, plots are PNGs embedded as ``data:`` URIs, and
there is no JavaScript, so it can be mailed, attached to an issue or opened offline. It shows

- training and validation loss, and accuracy when the run measured it;
- the learning rate as the run used it (the schedule, including warm-up and any cuts);
- gradient norms, with the steps where clipping acted marked;
- a regime strip (too large / too small / good) when the steps carry a ``regime``;
- any other numeric field the steps carry, one small plot each;
- a summary table: configuration highlights, steps, best and final validation metrics, time,
  why the run stopped, the latest diagnosis window's advice, and the safe-step guard's events
  (backoffs, skips);
- for a run with ``lr = "auto"``, what ran (from its ``lr_choice.json``): the method and rate
  chosen in the table, and below it why, and what choosing cost.

With several runs, every plot overlays them on the same axes (the legend names the runs) and
the table has one row per run: the page compares optimizers or learning rates directly.

Example:
    >>> write_report([Path("runs/sgd"), Path("runs/adamw")], Path("compare.html"))  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from steepest.train.config import ConfigError
from steepest.train.runs import (
    END,
    LR_CHOICE_FILE,
    REPORT_FILE,
    check_writable_place,
    open_run_folder,
    read_records,
)

#: Step fields with a plot or column of their own; other numeric fields get a plot each.
_KNOWN_STEP_FIELDS = frozenset(
    {
        "kind", "step", "epoch", "batch_in_epoch", "loss", "lr", "grad_norm", "clipped", "examples",
        "examples_per_second", "elapsed", "total_steps", "regime", "advice",
    }
)
#: Configuration keys shown in the summary table, in this order.
_CONFIG_HIGHLIGHTS = ("optimizer", "lr", "schedule", "warmup", "batch_size", "epochs", "clip_norm", "seed")
#: Regime colours: red for too large, amber for too small, green for good, grey for anything else.
_REGIME_COLORS = {"too_large": "#d62728", "too_small": "#ff9f1c", "good": "#2ca02c"}
_OTHER_REGIME_COLOR = "#bbbbbb"
#: Beyond this many points a line is thinned to every k-th point: the PNG cannot show more
#: detail than its pixels, and drawing a million points would take seconds per plot.
_MAX_POINTS = 4000
#: Values beyond +-this (and NaN, inf) are left out of the curves: a diverged run logs losses
#: and rates up to 1e308, and matplotlib's axis arithmetic (margins, ticks, log decades)
#: overflows near the float limit. Measured: 1e200 draws on linear and log axes alike.
_DRAWABLE = 1e200


@dataclass
class RunData:
    """What the report needs from one run folder."""

    name: str
    path: Path
    config: dict[str, Any]
    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    end: dict[str, Any] | None = None
    lr_choice: dict[str, Any] | None = None  # lr_choice.json of an lr = "auto" run
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = str(self.config.get("label") or self.name)

    @property
    def plot_label(self) -> str:
        """The label as the plots draw it (see ``_plot_text``)."""
        return _plot_text(self.label)


def load_run(path: str | Path) -> RunData:
    """Read a run folder's config.toml and metrics.jsonl.

    Raises:
        ConfigError: the folder does not exist, has no metrics.jsonl, or it cannot be read
            (not UTF-8 text, no permission, a step that is not a whole number).
    """
    folder = open_run_folder(path)
    steps, evals, end = [], [], None
    try:
        records = read_records(folder.metrics_path)
    except UnicodeDecodeError:
        raise ConfigError(f"{folder.metrics_path} is not UTF-8 text: not a metrics file") from None
    except OSError as error:
        raise ConfigError(f"cannot read {folder.metrics_path}: {error.strerror or error}") from None
    for number, record in enumerate(records, start=1):
        kind = record.get("kind", "step")
        step = record.get("step")
        if kind in ("step", "eval") and (isinstance(step, bool) or not isinstance(step, int)):
            # (a hand-edited line: the plots order and compare steps, which must be whole numbers)
            raise ConfigError(
                f"{folder.metrics_path}: record {number} ({kind}) has step={step!r}, not a whole "
                "number: not a metrics file steepest wrote"
            )
        if kind == "step":
            steps.append(record)
        elif kind == "eval":
            evals.append(record)
        elif kind == END:
            end = record
    choice = _read_lr_choice(folder.path / LR_CHOICE_FILE)
    return RunData(folder.name, folder.path, folder.read_config(), steps, evals, end, choice)


def _read_lr_choice(path: Path) -> dict[str, Any] | None:
    """An ``lr = "auto"`` run's choice: a dict with a numeric ``lr`` and a ``method`` name, or
    None (no file, or not one steepest wrote: the report shows the configuration then)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("method"), str):
        return None
    if isinstance(record.get("lr"), bool) or not isinstance(record.get("lr"), (int, float)):
        return None
    return record


# --------------------------------------------------------------------------- plots


def _drawable(value: Any) -> bool:
    """Whether ``value`` is a number a plot can draw: finite, within +-_DRAWABLE, not a bool."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and abs(float(value)) <= _DRAWABLE
    )  # NaN fails the comparison


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records with a drawable number under ``key``, thinned to _MAX_POINTS."""
    points = [
        (record["step"], float(record[key]))
        for record in records
        if _drawable(record.get(key)) and isinstance(record.get("step"), (int, float))
    ]
    stride = max(1, math.ceil(len(points) / _MAX_POINTS))
    if stride > 1:
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    return [step for step, _ in points], [value for _, value in points]


def _png_data_uri(figure: Figure) -> str:
    """Render ``figure`` on an Agg canvas (no pyplot, no global state) as a base64 PNG data URI."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # A run label in a script the font lacks (CJK, emoji) draws as boxes: the HTML table
        # still shows it, so the warning, one per glyph, is only noise on the run's output.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_text(text: str) -> str:
    """``text`` as matplotlib should draw it literally: control characters escaped (``\\x01``;
    no font has a glyph for them) and ``$`` escaped (it would start mathtext, and an
    unbalanced or unknown expression fails to draw)."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) == "Cc" else char
        for char in text
    ).replace("$", r"\$")


def _legend(axes: Any) -> None:
    # A fixed corner: loc="best" tests every placement against every point drawn, seconds
    # (and a warning) on a long run's curves.
    axes.legend(fontsize="small", loc="upper right")


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Any]:
    figure = Figure(figsize=(7.5, 3.4), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _positive_log_scale(axes: Any, values: Sequence[float]) -> None:
    # A log axis shows a loss falling over decades and spans of gradient norms; only possible
    # when every value is positive and finite.
    finite = [value for value in values if math.isfinite(value)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 30:
        axes.set_yscale("log")


def _color(index: int) -> str:
    return f"C{index % 10}"


def plot_loss(runs: list[RunData]) -> Figure | None:
    """Training loss per logged step (solid) and validation loss per evaluation (dashed, dots)."""
    figure, axes = _new_axes("Loss", "loss")
    everything: list[float] = []
    for index, run in enumerate(runs):
        steps, values = _series(run.steps, "loss")
        if steps:
            axes.plot(steps, values, color=_color(index), linewidth=1, label=f"{run.plot_label} train")
        eval_steps, eval_values = _series(run.evals, "val_loss")
        if eval_steps:
            axes.plot(eval_steps, eval_values, "o--", color=_color(index), markersize=3,
                      label=f"{run.plot_label} val")
        everything += values + eval_values
    if not everything:
        return None
    _positive_log_scale(axes, everything)
    _legend(axes)
    return figure


def plot_accuracy(runs: list[RunData]) -> Figure | None:
    """Every accuracy the run logged: per step (``accuracy`` fields) and per evaluation."""
    figure, axes = _new_axes("Accuracy", "accuracy")
    drawn = False
    for index, run in enumerate(runs):
        for records, style in ((run.steps, "-"), (run.evals, "o--")):
            keys = sorted({key for record in records for key in record if "accuracy" in key})
            for key in keys:
                steps, values = _series(records, key)
                if steps:
                    axes.plot(steps, values, style, color=_color(index), markersize=3, linewidth=1,
                              label=f"{run.plot_label} {key}")
                    drawn = True
    if not drawn:
        return None
    _legend(axes)
    return figure


def plot_learning_rate(runs: list[RunData]) -> Figure | None:
    """The learning rate of every logged step: the schedule as it actually ran."""
    figure, axes = _new_axes("Learning rate (as run)", "learning rate")
    everything: list[float] = []
    for index, run in enumerate(runs):
        steps, values = _series(run.steps, "lr")
        if steps:
            axes.plot(steps, values, color=_color(index), linewidth=1.2, label=run.plot_label)
            everything += values
    if not everything:
        return None
    _positive_log_scale(axes, everything)
    _legend(axes)
    return figure


def plot_gradient_norm(runs: list[RunData]) -> Figure | None:
    """Gradient norm per logged step; an x marks each step where clipping acted."""
    figure, axes = _new_axes("Gradient norm (x: clipped)", "global gradient norm")
    everything: list[float] = []
    for index, run in enumerate(runs):
        steps, values = _series(run.steps, "grad_norm")
        if not steps:
            continue
        axes.plot(steps, values, color=_color(index), linewidth=1, label=run.plot_label)
        clipped = [(r["step"], r["grad_norm"]) for r in run.steps
                   if r.get("clipped") is True and _drawable(r.get("grad_norm"))]
        if clipped:
            axes.plot([s for s, _ in clipped], [v for _, v in clipped], "x", color=_color(index),
                      markersize=5, label=f"{run.plot_label} clipped ({len(clipped)} steps)")
        clip_norm = run.config.get("clip_norm")
        if _drawable(clip_norm):
            axes.axhline(clip_norm, color=_color(index), linestyle=":", linewidth=1)
        everything += values
    if not everything:
        return None
    _positive_log_scale(axes, everything)
    _legend(axes)
    return figure


def plot_regimes(runs: list[RunData]) -> Figure | None:
    """One horizontal strip per run, coloured by the learning-rate regime of each logged step."""
    runs_with_regime = [run for run in runs if any(isinstance(r.get("regime"), str) for r in run.steps)]
    if not runs_with_regime:
        return None
    figure = Figure(figsize=(7.5, 0.6 + 0.45 * len(runs_with_regime)), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title("Learning-rate regime")
    axes.set_xlabel("optimizer step")
    seen: dict[str, str] = {}
    for row, run in enumerate(runs_with_regime):
        # Merge consecutive steps of one regime into one bar: a few rectangles, not thousands.
        spans: list[tuple[str, int, int]] = []
        previous_step = None
        for record in run.steps:
            regime = record.get("regime")
            if not isinstance(regime, str):
                previous_step = record.get("step", previous_step)
                continue
            start = previous_step if previous_step is not None else record["step"] - 1
            if spans and spans[-1][0] == regime:
                spans[-1] = (regime, spans[-1][1], record["step"])
            else:
                spans.append((regime, start, record["step"]))
            previous_step = record["step"]
        for regime, start, stop in spans:
            color = _REGIME_COLORS.get(regime, _OTHER_REGIME_COLOR)
            seen.setdefault(regime, color)
            axes.broken_barh([(start, max(stop - start, 1))], (row - 0.4, 0.8), facecolors=color)
    axes.set_yticks(range(len(runs_with_regime)), [run.plot_label for run in runs_with_regime])
    axes.set_ylim(-0.6, len(runs_with_regime) - 0.4)
    axes.invert_yaxis()  # the first run on top, in the order of the summary table
    from matplotlib.patches import Patch

    axes.legend(handles=[Patch(color=color, label=regime) for regime, color in seen.items()],
                fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def plot_extra_field(runs: list[RunData], key: str) -> Figure | None:
    """A numeric step field the report has no special plot for (a new diagnostic, say)."""
    figure, axes = _new_axes(key, key)
    drawn = False
    for index, run in enumerate(runs):
        steps, values = _series(run.steps, key)
        if steps:
            axes.plot(steps, values, color=_color(index), linewidth=1, label=run.plot_label)
            drawn = True
    if not drawn:
        return None
    _legend(axes)
    return figure


def _extra_numeric_fields(runs: list[RunData]) -> list[str]:
    keys: dict[str, None] = {}  # a dict keeps first-seen order
    for run in runs:
        for record in run.steps:
            for key, value in record.items():
                if key in _KNOWN_STEP_FIELDS or "accuracy" in key:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    keys.setdefault(key)
    return list(keys)


def make_plots(runs: list[RunData]) -> dict[str, Figure]:
    """Every plot the runs have data for, by file stem (``loss``, ``lr``, ...), in page order."""
    candidates = {
        "loss": plot_loss(runs),
        "accuracy": plot_accuracy(runs),
        "lr": plot_learning_rate(runs),
        "grad_norm": plot_gradient_norm(runs),
        "regime": plot_regimes(runs),
    }
    for key in _extra_numeric_fields(runs):
        candidates[f"extra_{key}"] = plot_extra_field(runs, key)
    return {stem: figure for stem, figure in candidates.items() if figure is not None}


# --------------------------------------------------------------------------- summary


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _best(evals: list[dict[str, Any]], key: str, lower_is_better: bool) -> str:
    values = [e[key] for e in evals if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]
    if not values:
        return ""
    best = min(values) if lower_is_better else max(values)
    return f"{best:.2%}" if "accuracy" in key else f"{best:.4g}"


def _final(evals: list[dict[str, Any]], key: str) -> str:
    for record in reversed(evals):
        value = record.get(key)
        if isinstance(value, (int, float)):
            return f"{value:.2%}" if "accuracy" in key else f"{value:.4g}"
    return ""


def _configured(run: RunData, key: str) -> str:
    """A configuration highlight as the run used it: with ``lr = "auto"``, the method and the
    rate chosen (``MoMo (auto, for sgd)``, ``10 (auto)``), not ``sgd`` and ``auto``."""
    choice = run.lr_choice
    if choice is not None and key == "optimizer":
        asked = run.config.get("optimizer")
        return f"{choice['method']} (auto, for {asked})" if asked else str(choice["method"])
    if choice is not None and key == "lr":
        return f"{choice['lr']:.4g} (auto)"
    return _format(run.config.get(key))


def choice_cost(choice: dict[str, Any]) -> str:
    """What ``lr = "auto"`` spent choosing, in words: ``"278 evaluations (range_test)"``."""
    evaluations = choice.get("evaluations")
    spent = f"{evaluations} evaluations" if isinstance(evaluations, int) else "cost not recorded"
    return f"{spent} ({choice['policy']})" if isinstance(choice.get("policy"), str) else spent


def latest_advice(steps: list[dict[str, Any]]) -> str:
    """The advice of the latest diagnosis window the steps record.

    Runs log every window's advice ("looks good" included) on the step that completes it. In
    a run logged before good windows carried one, the latest advice may be older than good
    windows that followed it (their steps carry ``regime`` "good"): that is said instead.
    """
    for index in range(len(steps) - 1, -1, -1):
        advice = steps[index].get("advice")
        if not advice:
            continue
        later_good = [r["step"] for r in steps[index + 1 :] if r.get("regime") == "good"]
        if later_good and steps[index].get("regime") != "good":
            return f"good from step {later_good[0]} on (step {steps[index]['step']}: {advice})"
        return str(advice)
    return ""


def summary_rows(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    """The summary table: (column headers, one row of text per run)."""
    eval_keys: dict[str, None] = {}
    for run in runs:
        for record in run.evals:
            for key, value in record.items():
                if key not in ("kind", "step", "epoch", "elapsed") and isinstance(value, (int, float)):
                    eval_keys.setdefault(key)
    headers = ["run", *_CONFIG_HIGHLIGHTS, "steps", "epochs run"]
    for key in eval_keys:
        headers += [f"best {key}", f"final {key}"]
    headers += ["final train loss", "time", "stopped by", "regimes", "latest advice", "safety events",
                "lr choice cost"]
    rows = []
    for run in runs:
        last = run.steps[-1] if run.steps else {}
        last_step = max([r.get("step", 0) for r in run.steps + run.evals] or [0])
        elapsed = max([r.get("elapsed", 0) or 0 for r in run.steps + run.evals] or [0])
        if run.end and isinstance(run.end.get("elapsed"), (int, float)):
            elapsed = run.end["elapsed"]
        epochs_run = max([r.get("epoch", 0) or 0 for r in run.steps + run.evals] or [0])
        row = [run.label, *(_configured(run, key) for key in _CONFIG_HIGHLIGHTS),
               str(last_step), str(epochs_run)]
        for key in eval_keys:
            lower_is_better = "loss" in key or "error" in key
            row += [_best(run.evals, key, lower_is_better), _final(run.evals, key)]
        regimes: dict[str, int] = {}
        for record in run.steps:
            if isinstance(record.get("regime"), str):
                regimes[record["regime"]] = regimes.get(record["regime"], 0) + 1
        total = sum(regimes.values())
        regime_text = ", ".join(f"{name} {count / total:.0%}" for name, count in regimes.items())
        advice = latest_advice(run.steps)
        # what the safe-step guard did: "backoff: <reason>", "skip: <reason>", ... per step
        events: dict[str, int] = {}
        for record in run.steps:
            if isinstance(record.get("safety"), str):
                action = record["safety"].split(":", 1)[0]
                events[action] = events.get(action, 0) + 1
        row += [
            _format(last.get("loss")),
            f"{elapsed:.1f} s" if elapsed else "",
            _format((run.end or {}).get("stopped_by")),
            regime_text,
            advice,
            ", ".join(f"{action} x{count}" for action, count in events.items()),
            "" if run.lr_choice is None else choice_cost(run.lr_choice),
        ]
        rows.append(row)
    # Columns empty for every run (no clipping configured, no regimes) only add noise.
    keep = [i for i in range(len(headers)) if i == 0 or any(row[i] for row in rows)]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]


# --------------------------------------------------------------------------- page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; font-weight: 600; }
figure { margin: 1rem 0; } img { max-width: 100%; height: auto; }
.muted { color: #777; font-size: 0.85rem; }
"""

_PLOT_TITLES = {
    "loss": "Training and validation loss",
    "accuracy": "Accuracy",
    "lr": "Learning-rate schedule as run",
    "grad_norm": "Gradient norms and clipping",
    "regime": "Learning-rate regime",
}


def render_html(runs: list[RunData], plots: dict[str, str]) -> str:
    """The page: a summary table and the plots (``stem -> data URI``), all inline."""
    title = runs[0].label if len(runs) == 1 else f"Comparison of {len(runs)} runs"
    headers, rows = summary_rows(runs)
    table = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    table.append("</table>")
    choices = [
        f"<p><b>{html.escape(run.label)}</b>: {html.escape(str(run.lr_choice['method']))} at lr "
        f"{run.lr_choice['lr']:.4g}, {html.escape(choice_cost(run.lr_choice))}: "
        f"{html.escape(str(run.lr_choice.get('reason', '')))}</p>"
        for run in runs
        if run.lr_choice is not None
    ]
    if choices:
        choices.insert(0, "<h2>Learning rate chosen (lr = auto)</h2>")
    figures = []
    for stem, uri in plots.items():
        caption = _PLOT_TITLES.get(stem, stem.removeprefix("extra_"))
        figures.append(
            f'<figure><img alt="{html.escape(caption)}" src="{uri}">'
            f"<figcaption class=\"muted\">{html.escape(caption)}</figcaption></figure>"
        )
    sources = ", ".join(html.escape(str(run.path)) for run in runs)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>steepest report: {html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>steepest report: {html.escape(title)}</h1>",
            f'<p class="muted">runs: {sources}</p>',
            "<h2>Summary</h2>",
            *table,
            *choices,
            "<h2>Curves</h2>",
            *figures,
            "</body></html>",
            "",
        ]
    )


def write_report(run_dirs: Sequence[str | Path], output: str | Path, save_plots: bool | None = None) -> Path:
    """Write the self-contained HTML report of one or several run folders.

    Args:
        run_dirs: run folders (each with a metrics.jsonl); several are overlaid for comparison.
        output: the HTML file to write (its folder is created if needed).
        save_plots: also write each plot as ``<stem>.png`` beside the report; default: only
            for a single run's report in its own folder (a comparison's plots belong to no
            one run folder, and a report written elsewhere must not replace the files there:
            ``-o lr.html`` beside a schedule's ``lr.png``).

    Returns:
        The path written.

    Raises:
        ConfigError: no run folders, or a folder that is not a run.

    Example:
        >>> write_report([Path("runs/x")], Path("runs/x/report.html"))  # doctest: +SKIP
        PosixPath('runs/x/report.html')
    """
    if not run_dirs:
        raise ConfigError("report: give at least one run folder")
    runs = [load_run(path) for path in run_dirs]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figures = make_plots(runs)
    plots = {stem: _png_data_uri(figure) for stem, figure in figures.items()}
    if save_plots is None:
        save_plots = len(runs) == 1 and output.parent.resolve() == Path(run_dirs[0]).resolve()
    if save_plots:
        for stem, uri in plots.items():
            (output.parent / f"{stem}.png").write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    output.write_text(render_html(runs, plots), encoding="utf-8")
    return output


def default_report_path(paths: Sequence[str | Path]) -> Path:
    """``<run>/report.html`` for one run, ``report.html`` in the current folder for several."""
    return Path(paths[0]) / REPORT_FILE if len(paths) == 1 else Path(REPORT_FILE)


def check_report_output(output: Path) -> None:
    """Refuse, before anything is drawn, a report file that cannot or must not be written.

    Only an ``.html`` name is taken, so that ``-o runs/x/config.toml`` (or metrics.jsonl, a
    checkpoint) cannot replace a run's own file by a report; and its folder must be one that
    exists or can be made, and that we may write in.

    Raises:
        ConfigError: the name does not end in .html, it names a folder, or a path component
            is a file, or the folder is not writable.
    """
    if output.suffix.lower() != ".html":
        raise ConfigError(f"report: -o {output}: the report is an HTML file; give a name ending in .html")
    if output.is_dir():
        raise ConfigError(f"report: {output} is a folder; give a file name, e.g. -o {output / REPORT_FILE}")
    check_writable_place(output.parent, f"report: cannot write {output}")
    if output.exists() and not os.access(output, os.W_OK):
        raise ConfigError(f"report: cannot write {output}: permission denied")


def report_main(paths: Sequence[str], output: str | None = None) -> int:
    """``steepest report RUN [RUN ...] [-o FILE]``: write the report, print its path, return 0.

    Raises:
        ConfigError: a path that is not a run folder, or an output it must not or cannot write
            (the command line prints it, exit code 2).

    Example:
        >>> report_main(["runs/a", "runs/b"], "compare.html")  # doctest: +SKIP
        wrote compare.html
        0
    """
    if not paths:
        raise ConfigError("report: give at least one run folder")
    for path in paths:  # check all before drawing anything: fail fast, with the bad path
        open_run_folder(path)
    target = Path(output) if output is not None else default_report_path(paths)
    check_report_output(target)
    try:
        written = write_report(list(paths), target)
    except OSError as error:  # what the checks cannot foresee: a full disk, a race
        raise ConfigError(f"report: cannot write {target}: {error.strerror or error}") from None
    print(f"wrote {written}", flush=True)
    return 0
