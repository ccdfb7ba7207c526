"""Atomic writes: a failure leaves the earlier file, folder or set of files as it was, a SIGKILL at any
rename of a publish is repaired by the next run's `recover`, and no temporary is left behind."""

import os
import signal
from pathlib import Path

import pytest
from killed_publish import NEW_SET, publish_in_a_process

from stoneseg import files
from stoneseg.files import partial_path, write_atomically

OLD_SET = {"index": "old index", "a": "old a", "gone": "old gone"}


def contents(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): path.read_text() for path in folder.rglob("*") if path.is_file()}


def old_report(root: Path) -> Path:
    (root / "report").mkdir(parents=True)
    (root / "report" / "old.csv").write_text("old")
    return root / "report"


def old_set(root: Path) -> Path:
    (root / "set").mkdir(parents=True)
    for name, text in OLD_SET.items():
        (root / "set" / name).write_text(text)
    return root / "set"


def test_write_atomically_replaces_and_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with partial_path(target) as partial:
            assert partial.suffix == ".json" and partial.parent == tmp_path
            partial.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json"]


def test_staged_folder_replaces_an_existing_folder_whole_and_only_when_told(tmp_path):
    target = old_report(tmp_path)
    with pytest.raises(FileExistsError, match="report exists"):
        with files.staged_folder(target) as folder:
            (folder / "new.csv").write_text("new")
    assert contents(target) == {"old.csv": "old"}
    with files.staged_folder(target, overwrite=True) as folder:
        (folder / "new.csv").write_text("new")
    assert contents(target) == {"new.csv": "new"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]  # no staging or replaced folder


@pytest.mark.parametrize("kind", ["folder", "set"])
def test_a_failed_rename_undoes_the_renames_before_it(tmp_path, monkeypatch, kind):
    """The second rename fails (for a folder: the new folder into place, after the old one moved aside)."""
    target = old_report(tmp_path) if kind == "folder" else old_set(tmp_path)
    before = contents(target)
    real_replace, renames = os.replace, []

    def second_rename_fails(source, destination):
        if ".partial-" in Path(source).name:  # write_atomically's rename of the journal itself
            return real_replace(source, destination)
        renames.append(source)
        if len(renames) == 2:
            raise OSError("rename failed (injected)")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="injected"):
        if kind == "folder":
            with files.staged_folder(target, overwrite=True) as folder:
                (folder / "new.csv").write_text("new")
        else:
            with files.staging_folder(target, "set") as staging:
                for name, text in NEW_SET.items():
                    (staging / name).write_text(text)
                files.replace_files(staging, sorted(target.glob("[!.]*")), list(NEW_SET))
    monkeypatch.undo()
    assert contents(target) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [target.name]
    assert sorted(path.name for path in target.iterdir()) == sorted(before)


@pytest.mark.parametrize("kind, renames", [("folder", 2), ("set", 6)])
def test_a_sigkill_at_any_rename_is_repaired_by_the_next_run(tmp_path, kind, renames):
    """Killed before rename k of n: the next run's recover puts the old files back for k < n (the last
    rename, the commit point, had not happened) and keeps the new ones for k = n."""
    for step in range(renames + 1):
        root = tmp_path / str(step)
        target = old_report(root) if kind == "folder" else old_set(root)
        before = contents(target)
        assert publish_in_a_process(kind, target, kill_before_rename=step) == -signal.SIGKILL
        assert len([path for path in (root if kind == "folder" else target).iterdir()
                    if files.STAGING in path.name]) == 1  # the killed run's staging folder is left

        label = "report" if kind == "folder" else "set"
        notes = files.recover(target.parent if kind == "folder" else target, label)
        committed = step == renames
        expected = ({"new.csv": "new"} if kind == "folder" else NEW_SET) if committed else before
        assert contents(target) == expected, f"killed before rename {step}"
        assert not any(files.STAGING in path.name for path in root.rglob("*"))
        assert len(notes) == (0 if step == 0 else 1)  # nothing to repair before the first rename


def test_an_unkilled_publish_in_a_process_completes(tmp_path):
    target = old_set(tmp_path)
    assert publish_in_a_process("set", target) == 0
    assert contents(target) == NEW_SET


def test_recover_leaves_a_running_publish_alone(tmp_path):
    target = old_set(tmp_path)
    with files.staging_folder(target, "set") as staging:
        (staging / "a").write_text("new a")
        assert files.recover(target, "set") == []
        assert (staging / "a").read_text() == "new a"  # its staging folder is untouched while it runs
    assert contents(target) == OLD_SET
