"""Progress of a training run: a live bar on a terminal, plain lines in logs and CI.

``Progress`` is a fit callback. On a terminal it draws a rich progress bar with the loss, the
learning rate, the throughput, the time left and the learning-rate regime when the records
carry one. When stdout is not a terminal (a pipe, a CI log) a bar would write hundreds of
redraws, so it prints plain lines instead: one per epoch, or one every ``every`` steps.

Example:
    >>> progress = Progress()                       # bar on a terminal, plain lines otherwise
    >>> progress = Progress(mode="plain", every=50)  # force plain lines, one per 50 steps
    >>> progress = Progress(quiet=True)              # print nothing
"""

from __future__ import annotations

import sys
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from steepest.train.runs import record_to_dict

#: Display modes: ``auto`` chooses ``bar`` when the output is a terminal, else ``plain``.
MODES: tuple[str, ...] = ("auto", "bar", "plain")

#: Step fields shown by name in every line; anything else a record carries (say ``regime``)
#: is shown after them, so new diagnostics appear without changing this file.
_KNOWN_FIELDS = frozenset(
    {
        "step", "epoch", "batch_in_epoch", "loss", "lr", "grad_norm", "clipped", "examples",
        "examples_per_second", "elapsed", "total_steps", "kind", "advice", "update_norm",
    }
)


def format_duration(seconds: float) -> str:
    """``75.3`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``: the form a clock shows."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_metric(name: str, value: Any) -> str:
    """One ``name value`` pair: accuracies as percentages, other floats with 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} {value}"
    if "accuracy" in name:
        return f"{name} {value:.2%}"
    if isinstance(value, int):
        return f"{name} {value}"
    return f"{name} {value:.4g}"


def _extra_fields(fields: dict[str, Any]) -> list[str]:
    return [format_metric(key, value) for key, value in fields.items()
            if key not in _KNOWN_FIELDS and value is not None]


class Progress:
    """Fit callback that shows how training goes; nothing at all when ``quiet``.

    Args:
        mode: ``"auto"`` (default: a bar when the console is a terminal), ``"bar"`` or ``"plain"``.
        every: plain mode prints one line every ``every`` steps; None (default) one per epoch.
        quiet: print nothing.
        console: the rich Console to draw on (default: one on stdout). In plain mode lines go to
            its file when one is given, else to ``sys.stdout`` as it is when each line is printed.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> progress = Progress(console=Console(file=io.StringIO(), force_terminal=True))
        >>> progress.mode
        'bar'
    """

    name = "progress"

    def __init__(
        self,
        mode: str = "auto",
        every: int | None = None,
        quiet: bool = False,
        console: Console | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be None or an integer >= 1, got {every!r}")
        self.quiet = quiet
        self.every = every
        self._console = console
        if mode == "auto":
            # rich's is_terminal checks isatty() and honours FORCE_COLOR / TTY_COMPATIBLE.
            mode = "bar" if (console or Console()).is_terminal else "plain"
        self.mode = mode
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._pending: dict[str, Any] | None = None  # plain mode: the last step not yet printed
        self._epochs: int | None = None
        self._total_steps: int | None = None

    # ----------------------------------------------------------------- output

    def _print(self, line: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)  # above the live bar
            return
        stream: IO[str] = self._console.file if self._console is not None else sys.stdout
        print(line, file=stream, flush=True)

    def _position(self, fields: dict[str, Any]) -> str:
        parts = []
        if fields.get("epoch") is not None:
            parts.append(f"epoch {fields['epoch']}" + (f"/{self._epochs}" if self._epochs else ""))
        total = fields.get("total_steps") or self._total_steps
        parts.append(f"step {fields['step']}" + (f"/{total}" if total else ""))
        return "  ".join(parts)

    def _step_line(self, fields: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
        parts = [self._position(fields), format_metric("loss", fields.get("loss"))]
        if fields.get("lr") is not None:
            parts.append(f"lr {fields['lr']:.2e}")
        if fields.get("examples_per_second"):
            parts.append(f"{fields['examples_per_second']:,.0f} ex/s")
        parts += [format_metric(key, value) for key, value in (metrics or {}).items()]
        parts += _extra_fields(fields)
        elapsed, step = fields.get("elapsed"), fields["step"]
        total = fields.get("total_steps") or self._total_steps
        if elapsed is not None:
            if total and step:
                parts.append(f"ETA {format_duration(elapsed / step * (total - step))}")
            parts.append(f"{elapsed:.1f}s")
        return "  ".join(parts)

    def _flush_pending(self, metrics: dict[str, Any] | None = None) -> None:
        if self._pending is not None:
            self._print(self._step_line(self._pending, metrics))
            self._pending = None

    # ----------------------------------------------------------------- callback methods

    def on_fit_start(self, trainer: Any) -> None:
        """Start the bar (bar mode) sized to the run's total steps."""
        config = getattr(trainer, "config", None) or {}
        self._epochs = config.get("epochs") if isinstance(config, dict) else None
        self._total_steps = getattr(trainer, "total_steps", None)
        if self.quiet or self.mode != "bar":
            return
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}", markup=False),  # advice text may hold [brackets]
            TimeRemainingColumn(),
            console=self._console or Console(),
            refresh_per_second=4,  # redraws are costly: a few per second look live enough
            transient=False,
        )
        start = int(getattr(trainer, "step", 0) or 0)  # a resumed run starts part-way
        self._task = self._bar.add_task("train", total=self._total_steps, completed=start, status="")
        self._bar.start()

    def on_step_end(self, trainer: Any, record: Any) -> None:
        """Update the bar, or print the finished epoch's line / every ``every``-th step."""
        if self.quiet:
            return
        fields = record_to_dict(record)
        if self._bar is not None:
            status = [format_metric("loss", fields.get("loss"))]
            if fields.get("lr") is not None:
                status.append(f"lr {fields['lr']:.2e}")
            if fields.get("examples_per_second"):
                status.append(f"{fields['examples_per_second']:,.0f} ex/s")
            status += _extra_fields(fields)
            self._bar.update(
                self._task,
                completed=fields["step"],
                total=fields.get("total_steps") or self._total_steps,
                description=f"epoch {fields.get('epoch', '?')}",
                status="  ".join(status),
            )
            return
        if self.every is not None:
            if fields["step"] % self.every == 0:
                self._print(self._step_line(fields))
            return
        # One line per epoch: an epoch has ended when a step of the next one arrives (or an
        # evaluation, or the end of the fit), so hold the latest step until then.
        if self._pending is not None and self._pending.get("epoch") != fields.get("epoch"):
            self._flush_pending()
        self._pending = fields

    def on_evaluate(self, trainer: Any, record: Any) -> None:
        """Print the validation metrics (with the epoch's line in per-epoch plain mode)."""
        if self.quiet:
            return
        metrics = dict(record.metrics)
        if self._bar is None and self.every is None and self._pending is not None:
            self._flush_pending(metrics)
            return
        position = f"epoch {record.epoch}  step {record.step}"
        self._print("  ".join([position] + [format_metric(key, value) for key, value in metrics.items()]))

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        """Print the last epoch's line, stop the bar, and say how the run ended."""
        if self.quiet:
            return
        self._flush_pending()
        if self._bar is not None:
            self._bar.stop()
        stopped_by = getattr(result, "stopped_by", None)
        steps = getattr(trainer, "step", None)
        line = f"done: {steps} steps" if steps is not None else "done"
        if stopped_by is not None:
            # fit gives a sentence ("completed epochs=20"); an enum shows its name
            reason = stopped_by.name.lower() if hasattr(stopped_by, "name") else stopped_by
            line += f", stopped by {reason}"
        self._print(line)
        self._bar = None
