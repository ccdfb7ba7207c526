"""tools.build_records: pairing, split by source, record round trip, bad input, atomic output."""

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from jpeg_exif import with_exif_orientation

from stoneseg import files, io
from stoneseg.pairs import find_pairs
from stoneseg.records import FEATURES, FORMAT_VERSION
from tools import build_records

REPO = Path(__file__).resolve().parents[1]

# Parsed with the format's own feature list: a feature the builder left out fails the parse.
SPEC = {name: tf.io.FixedLenFeature([], tf.string if kind == "bytes" else tf.int64) for name, kind in FEATURES.items()}


# ----------------------------------------------------------------------------- helpers
def encode(image: np.ndarray, suffix: str) -> bytes:
    ok, buffer = cv2.imencode(suffix, image, [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix != ".png" else [])
    assert ok
    return buffer.tobytes()


def photo_and_mask(seed: int, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    photo = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((height, width), np.uint8)
    centre = int(rng.integers(15, width - 15)), int(rng.integers(12, height - 12))  # no symmetry a flip could hide
    cv2.circle(mask, centre, int(rng.integers(6, 14)), 255, -1)
    return photo, mask


def write_pair(photo_path: Path, mask_path: Path, seed: int = 0, height: int = 48, width: int = 64) -> None:
    photo, mask = photo_and_mask(seed, height, width)
    photo_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    photo_path.write_bytes(encode(photo, ".png" if photo_path.suffix.lower() == ".png" else ".jpg"))
    mask_path.write_bytes(encode(mask, ".png" if mask_path.suffix.lower() == ".png" else ".jpg"))


def flat_folder(root: Path, count: int) -> Path:
    for index in range(count):
        write_pair(root / f"Image{index:02d}.JPG", root / f"Image{index:02d}_label.jpg", seed=index)
    return root


def build(*args) -> int:
    return build_records.main([str(arg) for arg in args])


def read_records(out: Path) -> dict[str, dict]:
    """Every record in `out`, parsed with tf.data as training will, by source name."""
    manifest = json.loads((out / "manifest.json").read_text())
    records = {}
    for split, entry in manifest["splits"].items():
        files = [str(out / shard) for shard in entry["shards"]]
        dataset = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "")
        for serialized in dataset:
            parsed = tf.io.parse_single_example(serialized, SPEC)
            record = {key: value.numpy() for key, value in parsed.items()}
            record["image"] = tf.io.decode_png(parsed["image/png"], channels=3).numpy()
            record["mask"] = tf.io.decode_png(parsed["mask/png"], channels=1).numpy()[..., 0]
            record["split"] = split
            records[record["source/name"].decode()] = record
    return records


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}




# ----------------------------------------------------------------------------- split and shards
def test_split_is_by_source_disjoint_complete_and_deterministic():
    names = [f"Image{index:02d}.JPG" for index in range(20)]
    splits = build_records.split_sources(names[::-1], 0.2, 0.1, seed=42)  # input order must not matter
    assert {split: len(members) for split, members in splits.items()} == {"train": 14, "val": 4, "test": 2}
    assigned = [name for members in splits.values() for name in members]
    assert sorted(assigned) == names  # every photo in exactly one split
    assert build_records.split_sources(names, 0.2, 0.1, seed=42) == splits
    assert build_records.split_sources(names, 0.2, 0.1, seed=7)["val"] != splits["val"]


def test_the_stones20_split_quoted_in_the_docs(stones20):
    """docs/stones20.md: its build_records command (only --test-fraction 0.15 given: val 0.2 and seed 42 by default)
    makes 13 train, val Image01, 02, 16, 18, test Image06, 09, 12."""
    names = [pair.photo for pair in find_pairs(stones20).pairs]
    args = build_records.parse_args(["--data", str(stones20), "--out", "data/stones20-records", "--test-fraction",
                                     "0.15"])
    splits = build_records.split_sources(names, args.val_fraction, args.test_fraction, args.seed)
    assert len(splits["train"]) == 13
    assert sorted(splits["val"]) == ["Image01.JPG", "Image02.JPG", "Image16.JPG", "Image18.JPG"]
    assert sorted(splits["test"]) == ["Image06.JPG", "Image09.JPG", "Image12.JPG"]


@pytest.mark.parametrize("count, val, test, expected", [
    (1, 0.2, 0.0, {"train": 1}),
    (2, 0.2, 0.0, {"train": 1, "val": 1}),
    (2, 0.2, 0.2, {"train": 1, "val": 1}),
    (3, 0.2, 0.2, {"train": 1, "val": 1, "test": 1}),
    (5, 0.0, 0.0, {"train": 5}),
    (10, 0.5, 0.4, {"train": 1, "val": 5, "test": 4}),
])
def test_split_guards_tiny_data_sets(count, val, test, expected):
    splits = build_records.split_sources([f"p{index}" for index in range(count)], val, test, seed=0)
    assert {split: len(members) for split, members in splits.items()} == expected


@pytest.mark.parametrize("split, examples, megabytes, override, expected", [
    ("train", 16, 3, None, 8), ("train", 5, 1, None, 5), ("train", 5000, 2500, None, 25),
    ("train", 16, 3, 4, 4), ("train", 3, 1, 4, 3), ("val", 4, 1, None, 2), ("val", 1, 1, None, 1),
    ("test", 900, 450, None, 5),
])
def test_shard_count_rule(split, examples, megabytes, override, expected):
    assert build_records.shard_count(split, examples, megabytes * 2**20, override) == expected


# ----------------------------------------------------------------------------- records
def test_records_round_trip_through_tf_data(tmp_path):
    data = flat_folder(tmp_path / "photos", 6)
    (data / "notes.txt").write_text("stray")
    out = tmp_path / "records"
    assert build(
        "--data", data, "--out", out, "--size", 24, 32, "--val-fraction", 0.34, "--workers", 1) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["image_size"] == [24, 32]
    assert manifest["mode"] == "squash" and manifest["scale"] is None
    assert manifest["compression"] is None and manifest["seed"] == 42
    assert manifest["strays"] == ["notes.txt"] and manifest["skipped"] == []
    assert {split: entry["examples"] for split, entry in manifest["splits"].items()} == {"train": 4, "val": 2}
    shards = [shard for entry in manifest["splits"].values() for shard in entry["shards"]]
    assert sorted(path.name for path in out.iterdir()) == sorted(["manifest.json"] + shards)
    assert sorted(manifest["checksums"]) == sorted(shards)
    for shard in shards:
        content = (out / shard).read_bytes()
        assert manifest["checksums"][shard] == {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert manifest["build_options"] == ["--size", "24", "32", "--boundary-width", "1", "--val-fraction", "0.34",
                                         "--test-fraction", "0.0", "--seed", "42"]

    records = read_records(out)
    assert sorted(records) == [f"Image{index:02d}.JPG" for index in range(6)]
    for name, record in records.items():
        assert name in manifest["splits"][record["split"]]["sources"]  # each photo in its own split only
        # Expected another way: OpenCV's full decode and one area resize of the file (not io.py's reduced
        # decode), and the mask as drawn, before its JPEG encoding.
        full = cv2.cvtColor(cv2.imread(str(data / name)), cv2.COLOR_BGR2RGB)
        expected_image = cv2.resize(full, (32, 24), interpolation=cv2.INTER_AREA)
        assert np.abs(record["image"].astype(int) - expected_image).mean() < 2
        _, drawn_mask = photo_and_mask(seed=int(name[5:7]))
        expected_mask = cv2.resize(drawn_mask, (32, 24), interpolation=cv2.INTER_AREA) > io.MASK_THRESHOLD
        assert set(np.unique(record["mask"])) == {0, 1} and np.mean(record["mask"] == expected_mask) > 0.97
        assert (record["image/height"], record["image/width"]) == (24, 32)
        assert (record["source/height"], record["source/width"]) == (48, 64)
        assert record["source/sha256"].decode() == hashlib.sha256((data / name).read_bytes()).hexdigest()
    for split, entry in manifest["splits"].items():
        fractions = [records[name]["mask"].mean() for name in entry["sources"]]
        assert entry["stone_fraction"] == pytest.approx(np.mean(fractions), abs=1e-4)


@pytest.mark.parametrize("mode_flags", [["--scale", 0.5], []], ids=["--scale 0.5", "the default"])
def test_scale_records_keep_each_photos_aspect_ratio(tmp_path, mode_flags):
    data = tmp_path / "photos"
    shapes = {"Image00.JPG": (48, 64), "Image01.JPG": (47, 63), "Image02.JPG": (64, 40), "Image03.png": (33, 50)}
    for seed, (name, (height, width)) in enumerate(shapes.items()):
        write_pair(data / name, data / name.replace(".", "_label."), seed=seed, height=height, width=width)
    out = tmp_path / "records"
    assert build("--data", data, "--out", out, *mode_flags, "--val-fraction", 0.5, "--workers", 1) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["format_version"], manifest["mode"], manifest["scale"]) == (FORMAT_VERSION, "scale", 0.5)
    assert manifest["image_size"] is None
    records = read_records(out)
    assert sorted(records) == sorted(shapes)
    for name, record in records.items():
        height, width = shapes[name]
        expected = (math.ceil(height / 2), math.ceil(width / 2))  # the size io.Scale(0.5) promises
        assert record["image"].shape == (*expected, 3) and record["mask"].shape == expected
        assert (record["image/height"], record["image/width"]) == expected == io.Scale(0.5).of((height, width))
        assert (record["source/height"], record["source/width"]) == (height, width)
        if name.endswith(".JPG"):  # 1/2 is libjpeg's reduced decode alone, with no resize after it
            photo = cv2.imread(str(data / name), cv2.IMREAD_REDUCED_COLOR_2)
            mask = cv2.imread(str(data / name.replace(".", "_label.")), cv2.IMREAD_REDUCED_GRAYSCALE_2)
            assert np.array_equal(record["image"], photo[..., ::-1])
            assert np.array_equal(record["mask"], (mask > 127).astype(np.uint8))

    assert build("--data", data, "--out", tmp_path / "odd", "--scale", 0.3, "--workers", 1) == 0
    for name, record in read_records(tmp_path / "odd").items():
        assert record["image"].shape[:2] == tuple(math.ceil(side * 0.3) for side in shapes[name])


@pytest.mark.parametrize("flags, problem", [
    (["--scale", "0"], "--scale 0 must be in (0, 1]"),
    (["--scale", "-0.5"], "--scale -0.5 must be in (0, 1]"),
    (["--scale", "1.5"], "--scale 1.5 must be in (0, 1]"),
    (["--scale", "nan"], "--scale nan must be in (0, 1]"),
    (["--size", "64", "--scale", "0.5"], "--size (squash) and --scale (aspect ratio kept) are two modes"),
])
def test_bad_mode_flags_end_in_one_error_line_and_write_nothing(tmp_path, capsys, flags, problem):
    data = flat_folder(tmp_path / "photos", 2)
    with pytest.raises(SystemExit) as stopped:
        build("--data", data, "--out", tmp_path / "records", *flags)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines()[-1] == f"python -m tools.build_records: error: {problem}" + (
        "; give one of them" if "two modes" in problem else ": records are never larger than the photos")
    assert "Traceback" not in error and not (tmp_path / "records").exists()


def test_a_folder_never_holds_two_modes(tmp_path, capsys):
    data = flat_folder(tmp_path / "photos", 4)
    out = tmp_path / "records"
    assert build("--data", data, "--out", out, "--size", 16, "--workers", 1) == 0
    before = snapshot(out)
    assert build("--data", data, "--out", out, "--scale", 0.5, "--workers", 1) == 1
    assert f"{out} already holds squash 16x16 records" in capsys.readouterr().err
    assert snapshot(out) == before
    assert build("--data", data, "--out", out, "--scale", 0.5, "--workers", 1, "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    shards = [shard for entry in manifest["splits"].values() for shard in entry["shards"]]
    assert sorted(path.name for path in out.iterdir()) == sorted(["manifest.json"] + shards)  # no squash shard left
    assert all(record["image"].shape[:2] == (24, 32) for record in read_records(out).values())


def test_worker_processes_and_gzip_give_the_same_records(tmp_path):
    data = flat_folder(tmp_path / "photos", 5)
    assert build("--data", data, "--out", tmp_path / "one", "--size", 16, "--workers", 1) == 0
    assert build("--data", data, "--out", tmp_path / "two", "--size", 16, "--workers", 2, "--gzip") == 0
    one, two = read_records(tmp_path / "one"), read_records(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        assert all(np.array_equal(one[name][key], two[name][key]) for key in one[name])
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["compression"] == "GZIP"
    assert all(shard.endswith(".tfrecord.gz") for entry in manifest["splits"].values() for shard in entry["shards"])


def test_real_photos_build_with_counts_adding_up(stones20, tmp_path):
    assert build("--data", stones20, "--out", tmp_path / "records", "--size", 64) == 0
    manifest = json.loads((tmp_path / "records" / "manifest.json").read_text())
    splits = manifest["splits"]
    assert splits["train"]["examples"] + splits["val"]["examples"] == 20
    assert len(splits["train"]["shards"]) == 8 and len(splits["val"]["shards"]) == 2
    assert not set(splits["train"]["sources"]) & set(splits["val"]["sources"])
    assert manifest["strays"] == ["README.md", "SOURCES.json"]
    assert 0.5 < splits["train"]["stone_fraction"] < 0.8


def test_default_input_is_the_sample_written_first_if_missing(tmp_path, monkeypatch, capsys):
    sample = tmp_path / "data" / "sample"
    written = []

    def fake_write_sample(out, **_):
        written.append(out)
        return [path for path in flat_folder(out, 3).glob("*.JPG")]

    monkeypatch.setattr(build_records, "DEFAULT_DATA", sample)
    monkeypatch.setattr("tools.make_sample.write_sample", fake_write_sample)
    assert build("--out", tmp_path / "records", "--size", 16, "--workers", 1) == 0
    assert written == [sample]
    assert "writing the synthetic sample there first" in capsys.readouterr().out
    assert json.loads((tmp_path / "records" / "manifest.json").read_text())["input"] == str(sample)


# ----------------------------------------------------------------------------- bad input
def truncate_photo(data):
    photo = data / "Image01.JPG"
    photo.write_bytes(photo.read_bytes()[:-200])
    return "Image01.JPG: truncated JPEG"


def corrupt_photo(data):
    (data / "Image01.JPG").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return "Image01.JPG: corrupt, truncated or unsupported image data"


def empty_photo(data):
    (data / "Image01.JPG").write_bytes(b"")
    return "Image01.JPG: empty file"


def remove_mask(data):
    (data / "Image01_label.jpg").unlink()
    return "Image01.JPG: no mask: expected a mask Image01_label.jpg"


def resize_mask(data):
    (data / "Image01_label.jpg").write_bytes(encode(photo_and_mask(1, 40, 64)[1], ".jpg"))
    return "Image01_label.jpg: mask size 64x40 (width x height) differs from its photo Image01.JPG, 64x48"


def rotate_photo_by_exif(data):
    photo = data / "Image01.JPG"
    photo.write_bytes(with_exif_orientation(photo.read_bytes(), 6))
    return "differs from its photo Image01.JPG, 48x64 (width x height) (the sizes are transposed: the two " \
           "files' EXIF orientations may disagree)"


def colour_mask(data):
    mask = np.zeros((48, 64, 3), np.uint8)
    mask[10:30, 10:40] = (0, 200, 0)
    (data / "Image01_label.jpg").write_bytes(encode(mask, ".jpg"))
    return "Image01_label.jpg: mask is not black/white"


def photo_as_mask(data):
    (data / "Image01_label.jpg").write_bytes((data / "Image00.JPG").read_bytes())
    return "Image01_label.jpg: mask is not black/white"


@pytest.mark.parametrize("spoil", [truncate_photo, corrupt_photo, empty_photo, remove_mask, resize_mask,
                                   rotate_photo_by_exif, colour_mask, photo_as_mask])
def test_bad_pair_stops_the_run_names_the_file_and_writes_nothing(tmp_path, capsys, spoil):
    data = flat_folder(tmp_path / "photos", 3)
    expected = spoil(data)
    out = tmp_path / "records"
    assert build("--data", data, "--out", out, "--size", 16, "--workers", 1) == 1
    error = capsys.readouterr().err
    assert "1 problem(s)" in error and "nothing was written" in error
    assert expected in error
    assert not out.exists()


def test_every_problem_is_listed_at_once(tmp_path, capsys):
    data = flat_folder(tmp_path / "photos", 4)
    remove_mask(data)
    (data / "Image02_label.jpg").write_bytes(b"")
    assert build("--data", data, "--out", tmp_path / "records", "--workers", 2) == 1
    error = capsys.readouterr().err
    assert "2 problem(s)" in error
    assert "Image01.JPG: no mask" in error and "Image02_label.jpg: empty file" in error


def test_skip_bad_leaves_bad_pairs_out_and_lists_them(tmp_path, capsys):
    data = flat_folder(tmp_path / "photos", 5)
    truncate_photo(data)
    colour_mask_problem = colour_mask(data)  # Image01 is bad twice: both problems are reported
    (data / "Image03_label.jpg").unlink()
    out = tmp_path / "records"
    assert build("--data", data, "--out", out, "--size", 16, "--workers", 1, "--skip-bad") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = [(entry["file"], entry["problem"]) for entry in manifest["skipped"]]
    assert [file for file, _ in skipped] == ["Image03.JPG", "Image01.JPG", "Image01_label.jpg"]
    assert skipped[0][1].startswith("no mask") and skipped[1][1].startswith("truncated JPEG")
    assert skipped[2][1].startswith("mask is not black/white")
    assert sum(entry["examples"] for entry in manifest["splits"].values()) == 3
    assert sorted(read_records(out)) == ["Image00.JPG", "Image02.JPG", "Image04.JPG"]
    assert colour_mask_problem in capsys.readouterr().out


def test_all_pairs_bad_with_skip_bad_writes_nothing(tmp_path, capsys):
    data = flat_folder(tmp_path / "photos", 1)
    (data / "Image00.JPG").write_bytes(b"")
    assert build("--data", data, "--out", tmp_path / "records", "--skip-bad", "--workers", 1) == 1
    assert "no usable pair" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


def test_empty_or_missing_input_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    assert build("--data", tmp_path / "empty", "--out", tmp_path / "records") == 1
    assert "no photos in" in capsys.readouterr().err
    assert build("--data", tmp_path / "absent", "--out", tmp_path / "records") == 1
    assert "absent does not exist" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


def test_existing_records_are_kept_unless_overwrite(tmp_path, capsys):
    data = flat_folder(tmp_path / "photos", 3)
    out = tmp_path / "records"
    out.mkdir()
    (out / "README.md").write_text("tracked documentation")
    assert build("--data", data, "--out", out, "--size", 16, "--workers", 1) == 0
    before = snapshot(out)

    assert build("--data", data, "--out", out, "--size", 8, "--workers", 1) == 1
    error = capsys.readouterr().err
    assert f"{out} already holds squash 16x16 records" in error and "pass --overwrite" in error
    assert snapshot(out) == before

    assert build("--data", data, "--out", out, "--size", 8, "--workers", 1, "--overwrite", "--gzip") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_size"] == [8, 8]
    shards = [shard for entry in manifest["splits"].values() for shard in entry["shards"]]
    assert sorted(path.name for path in out.iterdir()) == sorted(["README.md", "manifest.json"] + shards)
    assert (out / "README.md").read_text() == "tracked documentation"


# ----------------------------------------------------------------------------- atomic output
@pytest.fixture
def existing_set(tmp_path):
    """A folder of photos and an earlier records set (with the tracked README) built from it."""
    data = flat_folder(tmp_path / "photos", 4)
    out = tmp_path / "records"
    out.mkdir()
    (out / "README.md").write_text("tracked documentation")
    assert build("--data", data, "--out", out, "--size", 16, "--workers", 1, "--val-fraction", 0.5) == 0
    return data, out, snapshot(out)


def test_failure_while_writing_shards_leaves_the_earlier_set_intact(existing_set, monkeypatch, capsys):
    data, out, before = existing_set
    real_write_shard, written = build_records.write_shard, []

    def write_then_fail(path, examples, gzip):
        if written:
            raise OSError("disk full (injected)")
        real_write_shard(path, examples, gzip)
        written.append(path)

    monkeypatch.setattr(build_records, "write_shard", write_then_fail)
    assert build("--data", data, "--out", out, "--size", 8, "--workers", 1, "--overwrite") == 1
    assert "build_records: error: disk full (injected)" in capsys.readouterr().err
    assert written  # one shard was really written before the failure
    assert snapshot(out) == before  # byte for byte, and no staging folder left behind


def test_failure_at_the_commit_point_restores_the_earlier_set(existing_set, monkeypatch, capsys):
    data, out, before = existing_set
    real_replace = os.replace

    def replace_but_not_the_new_manifest(source, target):
        if Path(target) == out / "manifest.json" and Path(source).parent.name.startswith(".records.staging-"):
            raise OSError("rename failed (injected)")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", replace_but_not_the_new_manifest)
    assert build("--data", data, "--out", out, "--size", 8, "--workers", 1, "--overwrite") == 1
    assert "build_records: error: rename failed (injected)" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_run_killed_while_swapping_records_leaves_the_next_run_the_old_set(existing_set, capsys):
    """SIGKILL in the middle of the swap: the old set moved aside into the staging folder, one new shard
    in `out`, no manifest. The next run puts the old set back byte for byte, then refuses to replace it
    without --overwrite. (tests/test_files.py kills the same mechanism before every rename.)"""
    data, out, before = existing_set
    old_files = len(before) - 1  # all but README.md
    env = dict(os.environ, **{files.KILL_BEFORE_RENAME: str(old_files + 1)})
    killed = subprocess.run([sys.executable, "-m", "tools.build_records", "--data", str(data), "--out", str(out),
                             "--size", "8", "--workers", "1", "--overwrite"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "manifest.json").exists()
    staging, = [path for path in out.iterdir() if path.name.startswith(".records.staging-")]
    assert sorted(path.name for path in (staging / files.REPLACED).iterdir()) == sorted(set(before) - {"README.md"})

    assert build("--data", data, "--out", out, "--size", 8, "--workers", 1) == 1
    error = capsys.readouterr().err
    assert "put back what it had moved aside" in error and re.search(r"already holds squash \d+x\d+ records", error)
    assert snapshot(out) == before  # byte for byte, and no staging folder left


def test_interrupted_first_run_leaves_no_output_folder(tmp_path, monkeypatch):
    data = flat_folder(tmp_path / "photos", 2)

    def interrupt(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_records, "write_shard", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build("--data", data, "--out", tmp_path / "new" / "records", "--size", 8, "--workers", 1)
    assert not (tmp_path / "new" / "records").exists()


def test_staging_left_by_a_killed_run_before_its_swap_is_removed(tmp_path):
    data = flat_folder(tmp_path / "photos", 2)
    out = tmp_path / "records"
    abandoned = out / ".records.staging-999999999-abc"  # no process holds its lock
    abandoned.mkdir(parents=True)
    (abandoned / "train-00000-of-00001.tfrecord").write_bytes(b"half")
    assert build("--data", data, "--out", out, "--size", 8, "--workers", 1) == 0
    assert not abandoned.exists()
