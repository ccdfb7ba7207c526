"""Writes that never leave half a file, half a folder or half a set of files.

One file is written under a temporary name beside it and renamed into place (`write_atomically`,
`partial_path`). A folder or a set of files is written into a staging folder and then published by a
list of renames (`publish`), of which the last is the commit point:

- before the first rename, the list is saved in the staging folder (`publish.json`);
- if a rename fails, the renames already done are undone in reverse order and the error is raised;
- if the process dies, even by SIGKILL, the next run calls `recover`, which completes the publish if
  its last rename happened and undoes it otherwise, so the earlier files are never stranded.

A staging folder is locked (flock) for as long as its process lives; `recover` leaves a locked one alone.
"""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

JOURNAL = "publish.json"
REPLACED = "replaced"  # in a staging folder: what a publish moved out of the way
STAGING = ".staging-"  # staging folders are named .<label>.staging-<pid>-<random>
# For tests only: SIGKILL this process just before rename N (0-based) of a publish; N = the number of
# renames kills it after the last rename, before its staging folder is deleted.
KILL_BEFORE_RENAME = "STONESEG_TEST_KILL_BEFORE_RENAME"


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


@contextlib.contextmanager
def staging_folder(parent: Path, label: str):
    """A new staging folder `parent/.<label>.staging-<pid>-<random>`, locked while this process lives and
    deleted when the block ends, unless a publish from it could neither finish nor be undone (then
    `recover` deals with it on the next run)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{label}{STAGING}{os.getpid()}-", dir=parent))
    lock = _lock(folder)
    try:
        yield folder
    finally:
        if not (folder / JOURNAL).exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def publish(staging: Path, moves: list[tuple[Path, Path]]) -> None:
    """Rename each (source, target) in order; the last rename is the commit point.

    All paths lie under staging's parent (one filesystem, so each rename is atomic) and no target may
    exist. The list is saved in `staging` first. If a rename fails, the done ones are undone in reverse
    order and the error is raised; if the undo fails too, the list stays for `recover`.
    """
    root = staging.parent
    journal = staging / JOURNAL
    write_atomically(journal, json.dumps([[os.path.relpath(path, root) for path in move] for move in moves]).encode())
    done = 0
    try:
        for source, target in moves:
            _kill_here_in_tests(done)
            if os.path.lexists(target):
                raise FileExistsError(f"{target} is in the way")
            os.replace(source, target)
            done += 1
        _kill_here_in_tests(done)
    except BaseException:
        _undo(moves[:done])
        journal.unlink()
        raise
    journal.unlink()


@contextlib.contextmanager
def staged_folder(target: Path, overwrite: bool = False):
    """Yield an empty folder to fill; when the block succeeds it is renamed to `target`. An existing
    `target` is replaced only with `overwrite` (else FileExistsError, and nothing changes); it is moved
    aside first and deleted only once the new folder is in place."""
    target = Path(target)
    with staging_folder(target.parent, target.name) as staging:
        content = staging / "new"
        content.mkdir()
        yield content
        moves = [(content, target)]
        if os.path.lexists(target):
            if not overwrite:
                raise FileExistsError(f"{target} exists")
            moves.insert(0, (target, staging / REPLACED))
        publish(staging, moves)


def replace_files(staging: Path, old: list[Path], new: list[str]) -> None:
    """Publish the files named `new` from `staging` into the folder that holds `staging`, moving the
    files `old` (in that folder) into staging/replaced first.

    Old files leave in the order given and new ones arrive in the order given. Put the file that
    readers open first (a manifest) first in `old` and last in `new`: from its departure until its
    arrival, which is the commit point, a reader finds no set rather than a mixed one.
    """
    folder = staging.parent
    aside = staging / REPLACED
    aside.mkdir()
    publish(staging, [(path, aside / path.name) for path in old] + [(staging / name, folder / name) for name in new])


def recover(parent: Path, label: str) -> list[str]:
    """Complete or undo the publishes under `parent` that a dead process left unfinished (staging
    folders `.<label>.staging-*`), delete their staging folders, and return a line for each repair."""
    notes = []
    for folder in sorted(Path(parent).glob(f".{label}{STAGING}*")):
        try:
            lock = _lock(folder, wait=False)
        except FileNotFoundError:
            continue  # its process has just removed it
        if lock is None:
            continue  # a running process's
        try:
            if (folder / JOURNAL).exists():
                moves = [(parent / source, parent / target) for source, target in json.loads((folder / JOURNAL).read_text())]
                source, target = moves[-1]
                if os.path.lexists(target) and not os.path.lexists(source):
                    notes.append(f"an interrupted run had finished publishing into {parent}; removed what it replaced")
                elif _undo(moves):
                    notes.append(f"an interrupted run had not finished publishing into {parent}; put back what it "
                                 "had moved aside")
            shutil.rmtree(folder)
        finally:
            os.close(lock)
    return notes


def _undo(moves: list[tuple[Path, Path]]) -> int:
    """Rename back, last first, every move whose target exists and whose source does not: the state
    just before the first move, whichever of them had happened. Returns the number of renames undone."""
    undone = 0
    for source, target in reversed(moves):
        if os.path.lexists(target) and not os.path.lexists(source):
            os.replace(target, source)
            undone += 1
    return undone


def _lock(folder: Path, wait: bool = True) -> int | None:
    """An open descriptor holding an exclusive flock on folder/lock, or None when another process holds it.
    The lock goes when the descriptor is closed or the process ends, however it ends."""
    descriptor = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _kill_here_in_tests(step: int) -> None:
    if os.environ.get(KILL_BEFORE_RENAME) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
