"""Writes that never leave half a file or half a folder: everything is written under a temporary
name beside its destination and renamed into place only when complete."""

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def partial_path(path):
    """A temporary path beside `path` (same suffix) to write to; renamed to `path` when the block
    succeeds, removed when it fails."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_atomically(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file."""
    with partial_path(path) as partial:
        partial.write_bytes(data)


def publish_folder(staging: Path, target: Path) -> None:
    """Rename the finished `staging` folder to `target`; an existing `target` is moved aside first
    and removed only once the new folder is in place."""
    if target.exists():
        retired = target.parent / f".{target.name}.replaced-{os.getpid()}"
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)
