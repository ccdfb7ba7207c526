"""Atomic writes: a failure leaves the earlier file or folder as it was, and no temporary behind."""

import pytest

from stoneseg.files import partial_path, publish_folder, write_atomically


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


def test_publish_folder_replaces_an_existing_folder_whole(tmp_path):
    target, staging = tmp_path / "report", tmp_path / ".report.partial"
    target.mkdir()
    (target / "old.csv").write_text("old")
    staging.mkdir()
    (staging / "new.csv").write_text("new")
    publish_folder(staging, target)
    assert [path.name for path in target.iterdir()] == ["new.csv"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]
