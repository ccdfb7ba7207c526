"""Photos + masks -> resized, sharded TFRecords and manifest.json (format: records/README.md).

    python -m tools.build_records [--data DIR] [--out records/] [--size 256 | --scale F] [--val-fraction 0.2] ...

Two modes: squash (--size, the default: every photo resized to one fixed size) and scale (--scale F: every
photo resized by F with its aspect ratio kept, so records differ in size and stones keep their detail).

Each photo is decoded once, in worker processes, by stoneseg.io (the same code prediction uses). All
pairs are decoded and checked before anything is written; the shards and the manifest are written into
a staging folder inside --out and moved into place only when complete.
"""

import argparse
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import multiprocessing
import re
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from stoneseg import cli, files, io, records, targets
from stoneseg.cli import InputError
from stoneseg.pairs import Pair, Problem, find_pairs
from stoneseg.records import FORMAT_VERSION, MANIFEST

# Only light imports above: decode workers re-import this module, and must never load TensorFlow.
# TensorFlow, Keras and scikit-learn are imported inside the functions that run in the parent.

PROG = "build_records"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "data" / "sample"
DEFAULT_OUT = REPO / "records"
# The default mode: photos resized by half, aspect kept. On stones20 a 0.5 round trip of the true masks keeps
# 5,740 of 6,235 stones (squash 256: 1,635), and a model trained on 0.5 records with 256 crops matched the
# squash-256 model's pixel IoU on the test photos while recovering far more stones (docs/stones20.md).
DEFAULT_SCALE = 0.5
SHARD_FILE = re.compile(r".+\.tfrecord(\.gz)?")
STAGING_LABEL = "records"  # staging folders in --out: .records.staging-*
MIN_TRAIN_SHARDS = 8  # so a multi-worker job can shard the training set by file
MIN_OTHER_SHARDS = 2
TARGET_SHARD_BYTES = 100 * 2**20


@dataclasses.dataclass(frozen=True)
class Example:
    """One decoded pair, as a worker hands it back: exactly what goes into its record."""
    source: str
    image_png: bytes
    mask_png: bytes
    boundary_png: bytes  # the instance-aware outputs' targets (stoneseg.targets)
    distance_png: bytes
    size: tuple[int, int]  # resized (height, width)
    source_size: tuple[int, int]  # original (height, width), EXIF-oriented
    sha256: str
    stone_fraction: float


# ----------------------------------------------------------------------------- decoding (worker processes)
def decode_pair(data: Path, pair: Pair, size: io.Size, boundary_width: int = targets.BOUNDARY_WIDTH
                ) -> Example | list[Problem]:
    """Decode, check and PNG-encode one pair and the instance targets of its true stones (found in the mask
    at its full size, where no gap between stones is lost); every problem found, or the finished Example."""
    decoded, problems = {}, []
    for name, decode in ((pair.photo, io.decode_photo), (pair.mask, io.decode_mask)):
        try:
            content = (data / name).read_bytes()
            decoded[name] = content, *decode(content, size, name)
        except OSError as error:
            problems.append(Problem(name, f"cannot be read ({error.strerror or error})"))
        except io.ImageError as error:
            problems.append(Problem(error.file, error.problem))
    if problems:
        return problems
    (content, image, photo_size), (mask_content, mask, mask_size) = decoded[pair.photo], decoded[pair.mask]
    try:
        io.check_same_size(pair.photo, photo_size, pair.mask, mask_size)
        labels, _ = io.decode_stones(mask_content, pair.mask)
    except io.ImageError as error:
        return [Problem(error.file, error.problem)]
    made = targets.records_targets(labels, mask.shape, mask, boundary_width)
    return Example(source=pair.photo, image_png=io.encode_png(image), mask_png=io.encode_png(mask),
                   boundary_png=io.encode_png(made["boundary"]), distance_png=io.encode_png(made["distance"]),
                   size=image.shape[:2], source_size=photo_size, sha256=hashlib.sha256(content).hexdigest(),
                   stone_fraction=float(mask.mean()))


def _start_worker() -> None:
    cv2.setNumThreads(1)  # one pair per process already keeps every core busy
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def decode_all(data: Path, pairs: list[Pair], size: io.Size, workers: int,
               boundary_width: int = targets.BOUNDARY_WIDTH) -> list[Example | list[Problem]]:
    """decode_pair for every pair, in input order, on `workers` processes, with progress."""
    job = functools.partial(decode_pair, data, size=size, boundary_width=boundary_width)
    if workers <= 1 or len(pairs) <= 1:
        return _collect(map(job, pairs), cli.Progress(len(pairs), "photo", PROG))
    # The workers come from a fork server (spawn where there is none), never from forking this process:
    # it may already run TensorFlow threads. The server preloads OpenCV and NumPy, so workers start fast.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([io.__name__])
    with context.Pool(min(workers, len(pairs)), initializer=_start_worker) as pool:
        results = pool.imap(job, pairs)
        # On a terminal the progress bar is Keras', imported (seconds) while the workers already decode.
        return _collect(results, cli.Progress(len(pairs), "photo", PROG))


def _collect(results, progress) -> list:
    collected = []
    for result in results:
        collected.append(result)
        progress.add(1)
    return collected


# ----------------------------------------------------------------------------- split and shards
def split_sources(names: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Assign each source photo to one split with scikit-learn, deterministically for `seed`.

    Names are sorted first, so directory order does not matter. With >= 2 photos a positive
    val_fraction gives at least one validation photo (a positive test_fraction: one test photo from 3
    photos up); at least one photo always stays in train. Empty splits are left out.
    """
    from sklearn.model_selection import train_test_split

    names = sorted(names)
    count = len(names)
    n_val = max(round(val_fraction * count), 1 if val_fraction > 0 and count >= 2 else 0)
    n_test = max(round(test_fraction * count), 1 if test_fraction > 0 and count >= 3 else 0)
    n_val = min(n_val, count - 1)
    n_test = min(n_test, count - 1 - n_val)
    if n_val + n_test:
        train, held_out = train_test_split(names, test_size=n_val + n_test, random_state=seed)
    else:
        train, held_out = names, []
    splits = {"train": train, "val": held_out[:n_val], "test": held_out[n_val:]}
    return {split: members for split, members in splits.items() if members}


def shard_count(split: str, examples: int, total_bytes: int, train_shards: int | None) -> int:
    """Shards for a split: train at least MIN_TRAIN_SHARDS (or --shards), others at least 2, more for big
    splits (about TARGET_SHARD_BYTES each), never more shards than examples."""
    by_size = math.ceil(total_bytes / TARGET_SHARD_BYTES)
    if split == "train":
        wanted = train_shards or max(MIN_TRAIN_SHARDS, by_size)
    else:
        wanted = max(MIN_OTHER_SHARDS, by_size)
    return max(1, min(examples, wanted))


def to_tf_example(example: Example) -> bytes:
    """The serialized tf.train.Example of one record (features: stoneseg.records.FEATURES)."""
    import tensorflow as tf

    values = {
        "image/png": example.image_png,
        "mask/png": example.mask_png,
        "boundary/png": example.boundary_png,
        "distance/png": example.distance_png,
        "image/height": example.size[0],
        "image/width": example.size[1],
        "source/name": example.source.encode(),
        "source/height": example.source_size[0],
        "source/width": example.source_size[1],
        "source/sha256": example.sha256.encode(),
    }

    def feature(name: str, value) -> tf.train.Feature:
        if records.FEATURES[name] == "bytes":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {name: feature(name, value) for name, value in values.items()}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_shard(path: Path, examples: list[Example], gzip: bool) -> None:
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for example in examples:
            writer.write(to_tf_example(example))


# ----------------------------------------------------------------------------- atomic output
def existing_records(out: Path) -> list[Path]:
    """The manifest and shard files in `out` (other files, such as README.md, are never touched)."""
    if not out.is_dir():
        return []
    return sorted(path for path in out.iterdir()
                  if path.is_file() and (path.name == MANIFEST or SHARD_FILE.fullmatch(path.name)))


def write_records(out: Path, shards: dict[str, list[Example]], manifest: dict, gzip: bool) -> None:
    """Write the shards and the manifest, with each shard's size and SHA-256 added to it, into a staging
    folder inside `out`, then swap them in for the records already there (stoneseg.files: renames, the
    manifest leaving first and arriving last, so its arrival is the commit point; a failed or killed swap
    is undone, the latter by the next run)."""
    created_out = not out.exists()
    try:
        with files.staging_folder(out, STAGING_LABEL) as staging:
            for name, examples in shards.items():
                write_shard(staging / name, examples, gzip)
            manifest = {**manifest, "checksums": {name: records.shard_checksum(staging / name) for name in shards}}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            old = sorted(existing_records(out), key=lambda path: path.name != MANIFEST)  # the manifest first
            files.replace_files(staging, old, [*shards, MANIFEST])
    except BaseException:
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


# ----------------------------------------------------------------------------- the command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.build_records",
        description="Decode stone photos and their black/white masks once (JPEG DCT-domain downscaling in "
                    "parallel worker processes), resize them to --size (squash) or by --scale (aspect ratio "
                    "kept), split them by source photo into train/val/test, and write TFRecord shards plus "
                    "manifest.json (format: records/README.md).",
        epilog="Input layouts: flat, the prototype's (X.JPG with mask X_label.jpg), or images/X.jpg with "
               "masks/X.png or masks/X_label.png; extensions .jpg/.jpeg/.png (masks also .tif/.tiff) in any case. A "
               "mask is black/white with thin gaps between touching stones (the prototype's), or a 16- or "
               "32-bit PNG/TIFF of instance labels, one value per stone (Cellpose's, StarDist's). Other files are "
               "ignored and listed. "
               "Bad input: every pair is checked before anything is written. Truncated, corrupt or empty "
               "files, a missing mask, a mask whose size differs from its photo and a mask that is not "
               "black/white are all listed with their file names, and nothing is written (exit status 1) "
               "unless --skip-bad. "
               "Shards: train gets max(8, total MB / 100) shards, val and test max(2, total MB / 100), "
               "never more than their photos; --shards sets the train count.")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="input folder (default: the synthetic sample data/sample, written first if missing)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="output folder (default: records/ in the repository)")
    parser.add_argument("--size", type=int, nargs="+", default=None, metavar="N",
                        help="squash mode, the prototype's (--size 256): every photo resized to N x N, or HEIGHT x "
                             "WIDTH, whatever its aspect ratio; train on it whole, or with --crop")
    parser.add_argument("--scale", type=float, default=None, metavar="F",
                        help=f"scale mode (the default, F = {DEFAULT_SCALE} without --size or --scale): every photo "
                             "resized by F (0 < F <= 1) with its aspect ratio kept, so stones keep their shape and "
                             "detail; records differ in size (train trains on crops of them). 1/2, 1/4 and 1/8 need "
                             "only libjpeg's reduced decode")
    parser.add_argument("--boundary-width", type=int, default=targets.BOUNDARY_WIDTH, metavar="PX",
                        help="the boundary target's band reaches this many record pixels to either side of each "
                             "stone's edge (train --output boundary)")
    parser.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                        help="share of photos for validation (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.0, metavar="F",
                        help="share of photos for test (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split (default: %(default)s)")
    parser.add_argument("--shards", type=int, default=None, metavar="N", help="number of train shards")
    parser.add_argument("--workers", type=int, default=cli.cores(), metavar="N",
                        help="decode processes (default: all cores, %(default)s)")
    parser.add_argument("--gzip", action="store_true", help="GZIP-compress the shards (.tfrecord.gz)")
    parser.add_argument("--overwrite", action="store_true", help="replace records already in --out")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave bad pairs out (listed, and in the manifest's 'skipped') instead of stopping")
    args = parser.parse_args(argv)
    if args.size is None and args.scale is None:
        args.scale = DEFAULT_SCALE
    if args.size is not None and args.scale is not None:
        parser.error("--size (squash) and --scale (aspect ratio kept) are two modes; give one of them")
    if args.scale is not None and not 0 < args.scale <= 1:
        parser.error(f"--scale {args.scale:g} must be in (0, 1]: records are never larger than the photos")
    if args.size is not None and (len(args.size) > 2 or min(args.size) < 1):
        parser.error("--size takes one or two positive integers")
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1
            and args.val_fraction + args.test_fraction < 1):
        parser.error("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if args.shards is not None and args.shards < 1 or args.workers < 1 or args.boundary_width < 1:
        parser.error("--shards, --workers and --boundary-width must be at least 1")
    return args


# The options that do not change what the records hold; build_options leaves them out.
NOT_RECORD_OPTIONS = ("data", "out", "workers", "overwrite")


def build_options(args: argparse.Namespace) -> list[str]:
    """The options these records were built with, as command-line words (every option that changes what
    the records hold, whatever its value), so that an error about damaged records can say how to rebuild."""
    words = []
    for dest, value in vars(args).items():
        if dest in NOT_RECORD_OPTIONS or value is None or value is False:
            continue
        words.append("--" + dest.replace("_", "-"))
        if value is not True:
            words += [str(item) for item in (value if isinstance(value, list) else [value])]
    return words


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status (0 done, 1 bad input or records in the way)."""
    args = parse_args(argv)
    if args.scale is not None:
        size, described = io.Scale(args.scale), f"scale {args.scale:g} (aspect ratio kept)"
    else:
        size = (args.size[0], args.size[-1])
        described = f"{size[0]}x{size[1]} (squash)"
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file, not a folder")
    for note in files.recover(args.out, STAGING_LABEL):
        print(f"{PROG}: {note}", file=sys.stderr)
    in_the_way = existing_records(args.out)
    if in_the_way and not args.overwrite:
        # --overwrite replaces the whole set, so one folder never holds records of two modes.
        raise InputError(f"{args.out} already holds {_describe_existing(args.out)}records "
                         f"({', '.join(p.name for p in in_the_way[:3])}{', ...' if len(in_the_way) > 3 else ''}); "
                         "pass --overwrite to replace them")
    data = args.data if args.data is not None else _default_sample()
    inventory = find_pairs(data)  # FileNotFoundError, NotADirectoryError
    if not inventory.pairs and not inventory.problems:
        raise InputError(f"no photos in {data} (expected X.jpg/.jpeg/.png with X_label.<ext>, or images/ "
                         f"and masks/ folders){_listing(' ignored', inventory.strays)}")

    started = time.perf_counter()  # after any sample writing: the summary times the build alone
    workers = min(args.workers, max(1, len(inventory.pairs)))
    print(f"Decoding {len(inventory.pairs)} photo/mask pair(s) from {data} at {described} "
          f"in {workers} process(es)")
    results = decode_all(data, inventory.pairs, size, workers, args.boundary_width)
    examples = [result for result in results if isinstance(result, Example)]
    problems = inventory.problems + [problem for result in results if isinstance(result, list) for problem in result]

    if problems and not args.skip_bad:
        print(f"{PROG}: error: {len(problems)} problem(s) in {data}; nothing was written "
              "(fix them, or pass --skip-bad to leave those pairs out):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if not examples:
        raise InputError(f"no usable pair in {data}; nothing was written")

    by_source = {example.source: example for example in examples}
    splits = split_sources(list(by_source), args.val_fraction, args.test_fraction, args.seed)
    suffix = ".tfrecord.gz" if args.gzip else ".tfrecord"
    shards, manifest_splits = {}, {}
    for split, sources in splits.items():
        members = [by_source[source] for source in sources]
        total_bytes = sum(len(m.image_png) + len(m.mask_png) + len(m.boundary_png) + len(m.distance_png)
                          for m in members)
        count = shard_count(split, len(members), total_bytes, args.shards)
        names = [f"{split}-{index:05d}-of-{count:05d}{suffix}" for index in range(count)]
        shards.update({name: members[index::count] for index, name in enumerate(names)})
        manifest_splits[split] = {
            "shards": names,
            "examples": len(members),
            "stone_fraction": round(float(np.mean([m.stone_fraction for m in members])), 4),
            "sources": sorted(sources),
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "mode": "scale" if args.scale is not None else "squash",
        "scale": args.scale,
        "image_size": None if args.scale is not None else list(size),
        "boundary_width": args.boundary_width,
        "compression": "GZIP" if args.gzip else None,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "splits": manifest_splits,
        "skipped": [problem._asdict() for problem in problems],
        "strays": inventory.strays,
        "input": str(data),
        "build_options": build_options(args),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    cli.import_tensorflow()  # for the shard writer, without TensorFlow's start-up lines
    write_records(args.out, shards, manifest, args.gzip)
    _print_summary(args.out, manifest, len(examples), time.perf_counter() - started)
    return 0


def _default_sample() -> Path:
    if not DEFAULT_DATA.exists():
        print(f"No --data given and {DEFAULT_DATA} is missing: writing the synthetic sample there first "
              "(python -m tools.make_sample)")
        from tools.make_sample import write_sample

        write_sample(DEFAULT_DATA)
    return DEFAULT_DATA


def _describe_existing(out: Path) -> str:
    """"squash 256x256 " or "scale 0.5 " for the records in `out`; "" when its manifest cannot say."""
    try:
        return records.describe(records.load_manifest(out)) + " "
    except InputError:
        return ""


def _listing(label: str, names: list[str]) -> str:
    return f";{label}: {', '.join(names)}" if names else ""


def _print_summary(out: Path, manifest: dict, count: int, elapsed: float) -> None:
    print(f"\nWrote {count} photo(s) to {out} in {elapsed:.1f} s ({count / elapsed:.1f} photos/s)")
    print(f"  {'split':<6}{'photos':>8}{'shards':>8}{'stone fraction':>16}")
    for split, entry in manifest["splits"].items():
        print(f"  {split:<6}{entry['examples']:>8}{len(entry['shards']):>8}{entry['stone_fraction']:>16.3f}")
    print(f"  ignored files: {', '.join(manifest['strays']) or 'none'}")
    print(f"  skipped: {len(manifest['skipped']) or 'none'}")
    for problem in manifest["skipped"]:
        print(f"    {problem['file']}: {problem['problem']}")


if __name__ == "__main__":
    sys.exit(main())
