"""Bench: tools.build_records against the prototype's way of reading photos, in the same run.

    python -m bench.build_records [--repeats 5] [--size 256] [--mask-grey]

On 20 sample photos of 3456x4806 (written to data/bench-sample by tools.make_sample if missing):
(1) build_records.main() into a temporary folder: worker processes on all cores, DCT-reduced decode,
PNG records;
(2) the prototype, as the records issue describes it: sequential cv2.imread at full resolution + cvtColor
+ cv2.resize to the size, for the photo and for the mask (--mask-grey: the mask read as greyscale,
a kinder baseline than the notebook's). The page cache is warmed first, one untimed run of each is
made, then the two alternate `--repeats` times; medians are printed, with the ratio and the ratio per
core (the builder uses every core, the prototype one).
"""

# Light imports only: build_records' workers re-import this script as their __main__ module.
import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from bench.machine import describe
from stoneseg import cli
from stoneseg.io import read_photo
from tools import build_records
from tools.make_sample import write_sample

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "bench-sample"


def prototype(pairs: list[tuple[Path, Path]], size: int, mask_grey: bool) -> None:
    """The notebook's reading: full-resolution decode, cvtColor, resize, for the photo and the mask
    (with `mask_grey`, the mask decoded as greyscale directly)."""
    for photo, mask in pairs:
        cv2.resize(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB), (size, size))
        if mask_grey:
            cv2.resize(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE), (size, size))
        else:
            cv2.resize(cv2.cvtColor(cv2.imread(str(mask)), cv2.COLOR_BGR2GRAY), (size, size))


def build(size: int, scratch: Path) -> None:
    out = Path(tempfile.mkdtemp(dir=scratch))
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # no progress bars here
        status = build_records.main(["--data", str(SAMPLE), "--out", str(out), "--size", str(size)])
    if status != 0:
        raise SystemExit(f"build_records failed with status {status}")


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each, alternating")
    parser.add_argument("--size", type=int, default=256, help="resized size")
    parser.add_argument("--mask-grey", action="store_true",
                        help="the prototype reads masks as greyscale (a kinder baseline than the notebook's)")
    args = parser.parse_args()

    if not SAMPLE.exists():
        print(f"writing the bench sample (20 photos of 3456x4806) to {SAMPLE}")
        write_sample(SAMPLE, count=20)
    pairs = [(photo, photo.with_name(photo.stem + "_label.jpg")) for photo in sorted(SAMPLE.glob("Image*.JPG"))
             if not photo.stem.endswith("_label")]
    count = len(pairs)
    megabytes = sum(path.stat().st_size for pair in pairs for path in pair) / 2**20
    for pair in pairs:  # warm the page cache: both sides then read from memory
        for path in pair:
            path.read_bytes()
    height, width = read_photo(pairs[0][0], 8)[1]
    cores = cli.cores()
    print(describe())
    print(f"{count} photos + masks of {width}x{height}, {megabytes:.0f} MB; size {args.size}; build_records on "
          f"{cores} core(s), the prototype on one; masks read {'as grey' if args.mask_grey else 'in colour'} by the "
          "prototype")

    with tempfile.TemporaryDirectory() as scratch:
        first = seconds(lambda: build(args.size, Path(scratch)))
        seconds(lambda: prototype(pairs, args.size, args.mask_grey))
        print(f"first build_records run (imports TensorFlow, starts the fork server): {count / first:.1f} photos/s")
        ours, theirs = [], []
        for repeat in range(args.repeats):
            theirs.append(count / seconds(lambda: prototype(pairs, args.size, args.mask_grey)))
            ours.append(count / seconds(lambda: build(args.size, Path(scratch))))
            print(f"  run {repeat + 1}: build_records {ours[-1]:6.1f} photos/s   prototype {theirs[-1]:6.1f} photos/s")
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    ratio = ours_median / theirs_median
    print(f"median: build_records {ours_median:.1f} photos/s, prototype {theirs_median:.1f} photos/s, "
          f"ratio {ratio:.2f}x, per core {ratio / cores:.2f}x  (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
