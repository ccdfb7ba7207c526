"""tools/make_sample.py: layout, exact masks, determinism, safe writes and the CLI, on tiny 96x128 samples."""

import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from killed_publish import publish_in_a_process

from stoneseg.io import MASK_THRESHOLD
from tools import make_sample

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, COUNT = 96, 128, 3


def write(out: Path, **kwargs) -> list[Path]:
    options = dict(count=COUNT, height=HEIGHT, width=WIDTH, seed=0, workers=2) | kwargs
    return make_sample.write_sample(out, **options)


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("made") / "sample"
    write(out)
    return out


def test_layout_pairs_photos_with_masks(sample):
    assert sorted(path.name for path in sample.parent.iterdir()) == ["sample"]  # no staging folder left behind
    names = [f"Image{n:02d}{suffix}" for n in range(1, COUNT + 1) for suffix in (".JPG", "_label.jpg")]
    assert sorted(contents(sample)) == sorted(names)


def test_returns_the_photo_paths(tmp_path):
    photos = write(tmp_path / "sample", count=2, workers=1)
    assert photos == [tmp_path / "sample" / "Image01.JPG", tmp_path / "sample" / "Image02.JPG"]
    assert all(path.is_file() for path in photos)


def test_photos_and_masks_have_the_requested_size(sample):
    for n in range(1, COUNT + 1):
        photo = cv2.imread(str(sample / f"Image{n:02d}.JPG"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(sample / f"Image{n:02d}_label.jpg"), cv2.IMREAD_UNCHANGED)
        assert photo.shape == (HEIGHT, WIDTH, 3) and photo.dtype == np.uint8
        assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8


def test_mask_files_give_back_the_drawn_masks_exactly(sample):
    seeds = np.random.SeedSequence(0).spawn(COUNT)
    for n in range(1, COUNT + 1):
        _, drawn = make_sample.render_pair(seeds[n - 1], HEIGHT, WIDTH)
        stored = cv2.imread(str(sample / f"Image{n:02d}_label.jpg"), cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(drawn)) == {0, 255}
        assert np.array_equal((stored > MASK_THRESHOLD) * 255, drawn)
        assert np.all((stored < 40) | (stored > 215)), "JPEG error makes the threshold ambiguous"


def test_masks_have_a_sensible_stone_fraction(sample):
    for n in range(1, COUNT + 1):
        stone = cv2.imread(str(sample / f"Image{n:02d}_label.jpg"), cv2.IMREAD_GRAYSCALE) > MASK_THRESHOLD
        assert 0.2 < stone.mean() < 0.7


def test_stones_stand_out_from_the_belt(sample):
    for n in range(1, COUNT + 1):
        photo = cv2.imread(str(sample / f"Image{n:02d}.JPG")).astype(np.float32)
        stone = cv2.imread(str(sample / f"Image{n:02d}_label.jpg"), cv2.IMREAD_GRAYSCALE) > MASK_THRESHOLD
        assert photo[stone].mean() - photo[~stone].mean() > 15


def test_touching_stones_are_split_by_background():
    stones = [make_sample.Stone(40.0, 48.0, np.full(64, 20.0)), make_sample.Stone(80.0, 48.0, np.full(64, 20.0))]
    labels, mask = make_sample.draw_labels(stones, HEIGHT, WIDTH)
    assert labels[48, 59] == 1 and labels[48, 60] == 2  # the discs meet at x = 60
    assert np.all(mask[48, 59:61] == 0)  # where they touch, a one-pixel line of each is background
    assert np.all(mask[48, 21:59] == 255) and np.all(mask[48, 61:99] == 255)
    assert np.all(mask[labels == 0] == 0)


def test_same_seed_gives_identical_bytes_whatever_the_workers(sample, tmp_path):
    write(tmp_path / "again", workers=1)
    assert contents(tmp_path / "again") == contents(sample)


def test_another_seed_gives_other_pictures(sample, tmp_path):
    write(tmp_path / "other", seed=1)
    other, first = contents(tmp_path / "other"), contents(sample)
    assert all(other[name] != first[name] for name in first)


def test_refuses_a_non_empty_folder_and_leaves_it_alone(sample):
    before = contents(sample)
    with pytest.raises(FileExistsError, match=str(sample)):
        write(sample, seed=5)
    assert contents(sample) == before


def test_overwrite_replaces_the_sample(tmp_path):
    out = tmp_path / "sample"
    write(out, workers=1)
    write(out, count=2, seed=1, workers=1, overwrite=True)
    assert sorted(contents(out)) == ["Image01.JPG", "Image01_label.jpg", "Image02.JPG", "Image02_label.jpg"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sample"]


def test_overwrite_never_deletes_files_that_are_not_a_sample(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        write(tmp_path, overwrite=True)
    assert contents(tmp_path) == {"notes.txt": b"keep me"}


def test_an_interrupted_run_leaves_no_output_and_keeps_the_old_sample(tmp_path, monkeypatch):
    from stoneseg import cli

    def interrupt(progress, count=1):
        raise KeyboardInterrupt  # as if Ctrl-C arrived after the first photo was written

    out = tmp_path / "sample"
    write(out, count=2, workers=1)
    before = contents(out)
    monkeypatch.setattr(cli.Progress, "add", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write(out, seed=7, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "fresh")
    assert contents(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sample"]


def test_a_sample_replacement_killed_midway_is_put_back_by_the_next_run(tmp_path, capsys):
    """A run SIGKILLed after moving the earlier sample aside, before renaming its own into place: the
    next run puts the earlier sample back (and then refuses to replace it without overwrite)."""
    out = tmp_path / "sample"
    out.mkdir()
    (out / "Image01.JPG").write_bytes(b"earlier photo")
    assert publish_in_a_process("folder", out, kill_before_rename=1) == -signal.SIGKILL
    assert not out.exists()
    with pytest.raises(FileExistsError, match="not empty"):
        write(out)
    assert "put back what it had moved aside" in capsys.readouterr().err
    assert contents(out) == {"Image01.JPG": b"earlier photo"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sample"]


def test_a_mask_that_does_not_threshold_back_exactly_is_not_written(tmp_path, monkeypatch):
    """write_pair decodes each mask JPEG it encodes: at a quality where JPEG error crosses the threshold,
    the sample stops instead of writing a mask that differs from the drawn one."""
    monkeypatch.setattr(make_sample, "MASK_QUALITY", 5)
    with pytest.raises(RuntimeError, match=rf"Image01_label\.jpg: the JPEG mask thresholded at {MASK_THRESHOLD} differs "
                                           r"from the drawn mask in \d+ pixels"):
        make_sample.write_pair(tmp_path, 0, 1, np.random.SeedSequence(0), HEIGHT, WIDTH)
    assert not (tmp_path / "Image01_label.jpg").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.make_sample", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_help_documents_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--out", "--count", "--height", "--width", "--seed", "--workers", "--overwrite"):
        assert option in result.stdout


def test_cli_refuses_a_non_empty_folder_with_a_clear_error(tmp_path):
    (tmp_path / "Image01.JPG").write_bytes(b"earlier photo")
    result = run_cli("--out", str(tmp_path), "--count", "1", "--height", "64", "--width", "64")
    assert result.returncode == 1
    assert str(tmp_path) in result.stderr and "--overwrite" in result.stderr
    assert (tmp_path / "Image01.JPG").read_bytes() == b"earlier photo"


def test_cli_overwrite_writes_the_sample(tmp_path):
    (tmp_path / "Image01.JPG").write_bytes(b"earlier photo")
    result = run_cli("--out", str(tmp_path), "--count", "1", "--height", "64", "--width", "80", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert cv2.imread(str(tmp_path / "Image01.JPG")).shape == (64, 80, 3)
    assert cv2.imread(str(tmp_path / "Image01_label.jpg"), cv2.IMREAD_GRAYSCALE).shape == (64, 80)
