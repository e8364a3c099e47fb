"""Checkpoints that resume a run exactly, written atomically and read back safely.

A checkpoint is one ``torch.save`` file holding one dict of tensors, numbers, strings, lists
and dicts (nothing else, so that ``torch.load(path, weights_only=True)`` reads it and a file
crafted to run code is refused):

- ``format``: ``FORMAT``, so that a foreign ``.pt`` file is not mistaken for a checkpoint;
- ``checksum``: SHA-256 of the state's contents, so that a truncated or corrupted file is
  detected even where ``torch.load`` itself would succeed;
- ``state``: what the training loop stored (model, optimizer, random generators, ...).

Files are named ``step-000123.pt`` after the optimizer step they were taken at. A write goes
to a temporary file in the same folder, is flushed and ``fsync``-ed, then renamed over the
final name with ``os.replace`` (atomic on POSIX and Windows) and the folder is ``fsync``-ed,
so a crash at any moment leaves either the previous checkpoint or the new one, never half a
file under a checkpoint's name.

Example:
    >>> path = save_checkpoint({"step": 3}, folder, step=3)  # doctest: +SKIP
    >>> path.name, load_checkpoint(path)["step"]  # doctest: +SKIP
    ('step-000003.pt', 3)
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "CheckpointError",
    "capture_rng_states",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "remove_temporary_files",
    "load_checkpoint",
    "restore_rng_states",
    "save_checkpoint",
]

#: Marker stored in every checkpoint; bump the version when the layout changes.
FORMAT = "steepest-checkpoint-v1"

_NAME = re.compile(r"^step-(\d+)\.pt$")
_TEMPORARY_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, truncated, corrupted, unsafe or foreign."""


def checkpoint_path(folder: str | os.PathLike[str], step: int) -> Path:
    """The file name of the checkpoint taken after ``step`` optimizer steps: ``step-000123.pt``."""
    return Path(folder) / f"step-{step:06d}.pt"


def list_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint files of ``folder``, oldest (lowest step) first; [] if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _NAME.match(path.name))]
    return [path for _, path in sorted(found)]


# ------------------------------------------------------------------------------ checksum


def _update_digest(value: Any, digest: Any) -> None:
    """Feed ``value`` to ``digest`` in a canonical order: the same contents, the same hash.

    Hashing the contents rather than the file's bytes lets the file stay a plain
    ``torch.save`` file that any PyTorch user can open.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        # Raw bytes through a uint8 view: works for every dtype (bfloat16 has no numpy twin).
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            digest.update(repr(key).encode())
            _update_digest(item, digest)
    elif isinstance(value, (list, tuple)):
        # Lists and tuples hash alike: pickling keeps the kind, but nothing depends on it.
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _update_digest(item, digest)
    else:
        # repr of a float round-trips exactly, so equal numbers give equal text.
        digest.update(f"V{type(value).__name__}:{value!r}".encode())


def _checksum(state: Any) -> str:
    digest = hashlib.sha256()
    _update_digest(state, digest)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ writing


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened on Windows."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    state: Mapping[str, Any], folder: str | os.PathLike[str], step: int, keep_last: int | None = 3
) -> Path:
    """Write ``state`` atomically as ``folder/step-<step>.pt`` and keep only the newest files.

    Args:
        state: a dict of tensors, numbers, strings, lists and dicts (``weights_only``-safe).
        folder: the checkpoint folder, created if missing.
        step: the optimizer step the state was taken at (names the file).
        keep_last: how many checkpoint files to keep, newest first (default 3); None keeps all.

    Returns:
        The path of the new checkpoint.

    Example:
        >>> save_checkpoint({"model": model.state_dict()}, "runs/a", step=100)  # doctest: +SKIP
        PosixPath('runs/a/step-000100.pt')
    """
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
    ):
        raise ValueError(f"keep_last must be an integer >= 1 or None, got keep_last={keep_last!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    temporary = folder / f"{_TEMPORARY_PREFIX}{final.name}.{os.getpid()}"
    payload = {"format": FORMAT, "checksum": _checksum(state), "state": dict(state)}
    try:
        with open(temporary, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
    except BaseException:
        # Whatever went wrong (a full disk, Ctrl-C), leave no partial file behind.
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    if keep_last is not None:
        for old in list_checkpoints(folder)[:-keep_last]:
            old.unlink(missing_ok=True)
    return final


def remove_temporary_files(folder: str | os.PathLike[str]) -> None:
    """Delete temporary files left by a process killed in the middle of a write."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(f"{_TEMPORARY_PREFIX}*"):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ reading


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify one checkpoint; return the state that was saved.

    Always ``torch.load(..., weights_only=True)``: a file that would run code when unpickled
    is refused, not executed.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, unsafe, foreign, or its
            contents do not match the stored checksum.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds: RuntimeError, UnpicklingError, EOFError
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a steepest checkpoint (no {FORMAT!r} marker)")
    state = payload.get("state")
    if not isinstance(state, dict) or _checksum(state) != payload.get("checksum"):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted: its checksum does not match")
    return state


def latest_checkpoint(
    folder: str | os.PathLike[str], on_skip: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``folder`` that loads and verifies, with its state.

    A bad file (truncated, corrupted, unsafe) is skipped, and the one before it is tried.
    Returns None when no checkpoint is usable.

    Args:
        folder: the checkpoint folder.
        on_skip: called with one line naming each skipped file and why (e.g. the command line
            prints it); default: a ``UserWarning``.
    """
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            # torch's reasons run to paragraphs: their first sentence says what happened
            reason = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else "unreadable"
            message = f"skipping unusable checkpoint {str(path)!r}: {reason}"
            if on_skip is None:
                warnings.warn(message, stacklevel=2)
            else:
                on_skip(message)
    return None


# ------------------------------------------------------------------------------ random generators


def capture_rng_states(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random generator a run draws from, as tensors and plain lists.

    torch (CPU, and every CUDA device when present), numpy's and Python's global
    generators, and ``generator`` (the data loader's shuffling generator) when given.
    numpy's and Python's states are converted to tensors and lists so that the checkpoint
    stays ``weights_only``-safe.
    """
    version, python_state, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
        "generator": None if generator is None else generator.get_state(),
    }


def restore_rng_states(states: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Put every generator back in the state :func:`capture_rng_states` recorded."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if generator is not None and states["generator"] is not None:
        generator.set_state(states["generator"])
