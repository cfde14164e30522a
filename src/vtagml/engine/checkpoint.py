"""Checkpoints that a kill never truncates: :class:`AtomicCheckpointIO`.

Lightning's own :class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` saves through fsspec,
whose local "transaction" writes a temporary file in ``$TMPDIR`` and then moves it over the
checkpoint. When ``$TMPDIR`` is on another filesystem the move is a copy *into the checkpoint
itself* (opened with truncation), so a kill during that copy leaves a short or empty checkpoint
and, with one checkpoint name per run, no good checkpoint at all; the temporary file in
``$TMPDIR`` is never removed.

:class:`AtomicCheckpointIO` writes the checkpoint to a hidden temporary file next to it (same
directory, so same filesystem), ``fsync`` s it and renames it over the checkpoint
(:func:`vtagml.data.io.atomic_write`): readers and a kill at any moment see the previous
checkpoint or the new one, complete. On an error or an interrupt the temporary file is removed;
the one a hard kill (``SIGKILL``, power loss) leaves behind is removed by the next save to the
same path. Remote paths (``s3://``...) are saved by Lightning's own implementation.

``vtagml fit|validate|test|predict`` and ``vtagml demo`` use it; pass it to your own trainer as
``L.Trainer(plugins=[AtomicCheckpointIO()])``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vtagml.data.io import atomic_write

log = logging.getLogger(__name__)


def _is_local(path: str | os.PathLike) -> bool:
    from fsspec.implementations.local import LocalFileSystem
    return isinstance(get_filesystem(path), LocalFileSystem)


def stale_temporary_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files that an interrupted :func:`atomic_write` of ``path`` left next to it."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}.*.tmp{path.suffix}"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic and leave no temporary file.

    One writer per checkpoint path is assumed (Lightning saves from global rank 0 only).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(os.path.abspath(os.fspath(path)))
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in stale_temporary_files(path):  # left by a hard kill of an earlier save
            log.info("removing %s, left by an interrupted checkpoint save", stale)
            stale.unlink(missing_ok=True)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        _fsync_directory(path.parent)  # the rename itself survives a power loss


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform or filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
