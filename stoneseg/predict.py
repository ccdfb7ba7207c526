"""Masks for new photos: `python -m stoneseg.predict MODEL.keras INPUT... --out DIR`.

How a photo reaches the model follows the model (stoneseg.inference): a model of squashed photos takes
each photo area-resized to its input size, in batches, decoded by stoneseg.io exactly as the record
builder decoded the training photos; a model trained at a scale F takes each photo resized by F, whole
or in overlapping tiles. `--scale` overrides the model's scale, `--tile` forces tiles. The probability
map is upsampled bilinearly to the photo's original, EXIF-oriented size and then thresholded; the mask
is split into stones and measured there (stoneseg.stones). Per photo: `NAME_mask.png` (one channel,
0/255, the photo's width x height), `NAME_instances.png` (16-bit stone labels, 0 = background),
`NAME_stones.csv` (one row per stone), `NAME_sizes.png` (its size curve; none when no stone counts) and,
with --overlay, `NAME_overlay.jpg` (each stone outlined in its own colour); for the whole run
`predictions.csv` (one row per photo) and the size distribution pooled over every photo of the run,
`predictions_sizes.csv` and `predictions_sizes.png`.

Squashed photos are decoded on a thread pool a few batches ahead of the model (OpenCV releases the
GIL), and the upsampling, PNG encoding and writing of finished photos run on a second pool while the
model works on the next batch. A photo run on its own is decoded when its turn comes and, when tiled,
finished before the next one starts, so a tiled photo holds only itself, its map and a batch of tiles.
A tf.data pipeline over `py_function` would wrap the same OpenCV calls with no gain, and would make
"report the bad file by name and go on" awkward.
"""

from __future__ import annotations  # `keras.Model` annotations: Keras is imported once it is needed

import argparse
import csv
import io as bytes_io
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from stoneseg import cli, io, precision, stones
from stoneseg.choices import OUTPUT_STRIDE, PRECISIONS
from stoneseg.cli import InputError
from stoneseg.files import write_atomically
from stoneseg.inference import (DEFAULT_TILE, DEFAULT_TILE_OVERLAP, Inference, check_model_file, decode_ahead,
                                full_size_mask, load_model)

if TYPE_CHECKING:
    import keras

PROG = "predict"
# What is written per photo NAME, by kind; "sizes" only when the photo has a stone in its distribution,
# "overlay" only with --overlay.
PHOTO_SUFFIXES = {"mask": "_mask.png", "instances": "_instances.png", "stones": "_stones.csv",
                  "sizes": "_sizes.png", "overlay": "_overlay.jpg"}
RUN_NAME = "predictions"  # the run's own files: predictions.csv, and the pooled distribution's two files
PREDICTIONS_CSV = f"{RUN_NAME}.csv"
# The run's pooled distribution: its curve, and the sizes that 10, 20, ... 90 % of the material is finer than.
POOLED_SIZES_CSV = f"{RUN_NAME}_sizes.csv"
POOLED_SIZES_PNG = f"{RUN_NAME}{PHOTO_SUFFIXES['sizes']}"
POOLED_PERCENTS = tuple(range(10, 100, 10))
LISTED_OUTPUTS = 10  # outputs in the way named in the error line
# Folder scans skip the prototype's masks (X_label.jpg) and this tool's own outputs.
DERIVED_TAGS = ("_label", "_mask", "_overlay", "_instances", "_sizes")
OVERLAY_QUALITY = 90


@dataclass(frozen=True)
class Prediction:
    """One row of predictions.csv. stone_count: the stones found (split instances, edge stones included);
    edge_stones: those of them cut by the photo's edge. d10, d50, d80: the photo's size distribution (see
    `distribution_of`), in size_unit (mm with --mm-per-pixel, else px); empty when it has no stone."""
    file: str
    width: int
    height: int
    stone_fraction: float
    stone_count: int
    edge_stones: int
    size_unit: str
    d10: float | None
    d50: float | None
    d80: float | None


# ----------------------------------------------------------------------------- inputs and outputs
def find_photos(inputs: list[Path]) -> list[Path]:
    """The photos named, plus the photos directly inside the folders named, in order, each once.

    A folder contributes its files with a photo extension (io.PHOTO_SUFFIXES, any case) except masks
    and outputs (names ending in _label, _mask or _overlay), so a data folder in the prototype's
    layout or a previous --out folder can be given as is.
    """
    photos, seen = [], set()
    for given in inputs:
        if given.is_dir():
            found = sorted(path for path in given.iterdir() if path.is_file() and _is_photo_name(path))
        elif given.is_file():
            found = [given]
        else:
            raise InputError(f"{given}: no such file or folder")
        for path in found:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                photos.append(path)
    if not photos:
        raise InputError(f"no photos in {', '.join(map(str, inputs))} (looked for {'/'.join(io.PHOTO_SUFFIXES)})")
    clashes = {}
    for path in photos:
        clashes.setdefault(path.stem, []).append(str(path))
    clashes = [paths for paths in clashes.values() if len(paths) > 1]
    if clashes:
        raise InputError("photos with the same name would write the same outputs: "
                         + "; ".join(" and ".join(paths) for paths in clashes))
    for path in photos:
        if path.stem == RUN_NAME:
            raise InputError(f"{path}: a photo named {RUN_NAME!r} would write over the run's {POOLED_SIZES_PNG}; "
                             "rename it")
    return photos


def _is_photo_name(path: Path) -> bool:
    return path.suffix.lower() in io.PHOTO_SUFFIXES and not path.stem.lower().endswith(DERIVED_TAGS)


def output_paths(photo: Path, out: Path, overlay: bool) -> dict[str, Path]:
    """The files `photo` may write, by kind (PHOTO_SUFFIXES): the overlay only if asked for."""
    return {kind: out / f"{photo.stem}{suffix}" for kind, suffix in PHOTO_SUFFIXES.items()
            if overlay or kind != "overlay"}


def existing_outputs(photos: list[Path], out: Path, overlay: bool) -> list[Path]:
    """The outputs of this run that already exist."""
    planned = [path for photo in photos for path in output_paths(photo, out, overlay).values()]
    planned += [out / PREDICTIONS_CSV, out / POOLED_SIZES_CSV, out / POOLED_SIZES_PNG]
    return [path for path in planned if path.exists()]


def write_predictions_csv(path: Path, rows: list[Prediction]) -> None:
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([field.name for field in fields(Prediction)])
    writer.writerows(["" if value is None else value for value in astuple(row)] for row in rows)
    write_atomically(path, text.getvalue().encode())


def distribution_of(tables: stones.StoneTable | list[stones.StoneTable], args: argparse.Namespace,
                    unit: str | None = None) -> stones.Distribution:
    """The size distribution of one photo's stones or of a run's, as --weighting and --include-edge say
    (stoneseg.stones.size_distribution: equivalent-circle diameters, by area unless --weighting count,
    stones cut by the photo's edge left out unless --include-edge); in mm with --mm-per-pixel."""
    return stones.size_distribution(tables, by=args.weighting, include_edge=args.include_edge, unit=unit)


def curve_title(name: str, args: argparse.Namespace) -> str:
    """A size curve's title: what it shows, and whether edge stones are in it."""
    return f"{name}, {'edge stones included' if args.include_edge else 'edge stones left out'}"


def write_pooled_sizes(out: Path, tables: list[stones.StoneTable], args: argparse.Namespace) -> stones.Distribution:
    """Write the run's pooled distribution: POOLED_SIZES_CSV (percent passing, the size in px, and in mm with
    --mm-per-pixel; no size when no stone counts) and POOLED_SIZES_PNG (its curve; removed when there is
    none). Returns the distribution."""
    in_pixels = distribution_of(tables, args, unit="px")
    in_mm = distribution_of(tables, args, unit="mm") if args.mm_per_pixel is not None else None
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["percent_passing", "diameter_px"] + (["diameter_mm"] if in_mm else []))
    if len(in_pixels):
        for percent in POOLED_PERCENTS:
            sizes = [in_pixels.size_passing(percent)] + ([in_mm.size_passing(percent)] if in_mm else [])
            writer.writerow([percent, *(f"{size:.6g}" for size in sizes)])
    write_atomically(out / POOLED_SIZES_CSV, text.getvalue().encode())
    pooled = in_mm or in_pixels
    curve = stones.size_curve_png(pooled, curve_title(f"all {len(tables)} photo(s)", args))
    if curve is None:
        (out / POOLED_SIZES_PNG).unlink(missing_ok=True)  # an older run's curve would be a wrong answer
    else:
        write_atomically(out / POOLED_SIZES_PNG, curve)
    return pooled


# ----------------------------------------------------------------------------- masks, stones and what is written
def find_stones(path: Path, mask: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, stones.StoneTable]:
    """One photo's full-size mask split into stones (uint16 labels) and measured (--min-distance,
    --mm-per-pixel). A mask with no background at all is an io.ImageError naming the photo."""
    try:
        labels, boxes = stones.split_stones(mask, args.min_distance * min(mask.shape), return_boxes=True)
    except ValueError as error:
        raise io.ImageError(str(path), f"cannot split the predicted mask into stones: {error}") from None
    return labels, stones.measure_stones(labels, args.mm_per_pixel, boxes)


def finish_photo(path: Path, probability: np.ndarray, original: tuple[int, int], args: argparse.Namespace,
                 photo: np.ndarray | None = None) -> tuple[Prediction, stones.StoneTable]:
    """Upsample and threshold one photo's probabilities, then `write_outputs`."""
    return write_outputs(path, full_size_mask(probability, original, args.threshold), args, photo)


def write_outputs(path: Path, mask: np.ndarray, args: argparse.Namespace,
                  photo: np.ndarray | None = None) -> tuple[Prediction, stones.StoneTable]:
    """Split and measure one photo's full-size 0/255 mask, write its files to --out, return its row and its
    stone table (for the run's pooled distribution). Nothing is written for a mask that cannot be split.

    `photo` is the full-resolution photo when the caller has it; the overlay reads it otherwise. That is
    a second decode of the file, on purpose: the model's input must come from the reduced decode the
    records were made with, and only the overlay needs every pixel.
    """
    labels, table = find_stones(path, mask, args)
    return write_photo(path, mask, labels, table, args, photo), table


def write_photo(path: Path, mask: np.ndarray, labels: np.ndarray, table: stones.StoneTable, args: argparse.Namespace,
                photo: np.ndarray | None = None) -> Prediction:
    """Write one photo's mask, instances, stone table, size curve (and overlay) to --out; return its row."""
    paths = output_paths(path, args.out, args.overlay)
    write_atomically(paths["mask"], io.encode_png(mask))
    write_atomically(paths["instances"], stones.encode_instances_png(labels))
    write_atomically(paths["stones"], table.csv())
    distribution = distribution_of(table, args)
    curve = stones.size_curve_png(distribution, curve_title(path.name, args))
    if curve is None:
        paths["sizes"].unlink(missing_ok=True)  # an older run's curve would be a wrong answer
    else:
        write_atomically(paths["sizes"], curve)
    if args.overlay:
        photo = io.read_photo_full(path) if photo is None else photo
        write_atomically(paths["overlay"], io.encode_jpeg(stones.draw_stones(photo, labels), OVERLAY_QUALITY))
    height, width = mask.shape
    return Prediction(str(path), width, height, round(cv2.countNonZero(mask) / mask.size, 6), len(table),
                     int(table.columns["touches_edge"].sum()), distribution.unit,
                     *(None if d is None else round(d, 4) for d in (distribution.d10, distribution.d50, distribution.d80)))


# ----------------------------------------------------------------------------- the pipeline
class Run:
    """One prediction run: decodes, feeds the model as `inference` says, hands finished photos to the writers."""

    def __init__(self, inference: Inference, args: argparse.Namespace, photos: list[Path]):
        self.inference, self.args, self.photos = inference, args, photos
        self.decoders = ThreadPoolExecutor(args.workers, thread_name_prefix="decode")
        self.writers = ThreadPoolExecutor(args.workers, thread_name_prefix="write")
        self.finishing = deque()
        self.rows: dict[Path, tuple[Prediction, stones.StoneTable]] = {}
        self.failures: list[str] = []
        self.progress = cli.Progress(len(photos), "photo", PROG)

    def predict(self) -> tuple[list[tuple[Prediction, stones.StoneTable]], list[str]]:
        """(row, stone table) of the photos done, in input order, and one error line per photo that failed."""
        try:
            if self.inference.batched:
                self._predict_batches()
            else:
                self._predict_one_by_one()
            while self.finishing:
                self._collect()
        finally:
            self.decoders.shutdown(wait=True, cancel_futures=True)
            self.writers.shutdown(wait=True, cancel_futures=True)
        return [self.rows[path] for path in self.photos if path in self.rows], self.failures

    def _predict_batches(self):
        """Squashed photos, decoded two batches ahead, `batch_size` per model call."""
        batch_size = self.args.batch_size
        batch = []
        decode = partial(io.read_photo, size=self.inference.size)
        for path, decoded in decode_ahead(self.decoders, decode, self.photos, depth=2 * batch_size):
            if isinstance(decoded, io.ImageError):
                self._fail(path, decoded)
                continue
            batch.append((path, *decoded))
            if len(batch) == batch_size:
                self._run_batch(batch)
                batch = []
        if batch:
            self._run_batch(batch)

    def _run_batch(self, batch):
        probabilities = self.inference.probabilities(np.stack([image for _, image, _ in batch]))
        for (path, _, original), probability in zip(batch, probabilities):
            self._submit(path, finish_photo, path, probability, original, self.args, in_flight=self.args.workers)

    def _predict_one_by_one(self):
        """Photos resized by the scale, each whole or tiled. Nothing is decoded ahead, and a tiled photo is
        finished before the next is decoded: decoding and finishing are small beside a tiled model pass,
        and this way memory holds one photo, one map and one batch of tiles."""
        decode = partial(io.read_photo, size=self.inference.size)
        for path, decoded in decode_ahead(self.decoders, decode, self.photos, depth=0):
            if isinstance(decoded, io.ImageError):
                self._fail(path, decoded)
                continue
            image, original = decoded
            del decoded
            tiled = self.inference.tiles(*image.shape[:2])
            mask = full_size_mask(self.inference.probability(image), original, self.args.threshold)  # map freed
            # At scale 1 the decoded photo is the full-resolution one an overlay needs.
            photo = image if self.args.overlay and image.shape[:2] == original else None
            del image
            self._submit(path, write_outputs, path, mask, self.args, photo, in_flight=0 if tiled else 1)
            del mask, photo

    def _submit(self, path, finish, *arguments, in_flight):
        """Hand a photo to the writers (`finish`: finish_photo or write_outputs), keeping at most `in_flight`
        full-resolution jobs queued."""
        self.finishing.append((path, self.writers.submit(finish, *arguments)))
        while len(self.finishing) > in_flight:
            self._collect()

    def _collect(self):
        path, job = self.finishing.popleft()
        try:
            self.rows[path] = job.result()
            self.progress.add(1)
        except (io.ImageError, OSError) as error:
            self._fail(path, error)

    def _fail(self, path, error):
        line = str(error) if isinstance(error, io.ImageError) else f"{path}: {error}"
        if cli.interactive():
            print(flush=True)  # a line of its own, not the end of the progress bar's
        cli.error_line(PROG, line)
        self.failures.append(line)
        self.progress.add(1)


# ----------------------------------------------------------------------------- the command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stoneseg.predict",
        description="Predict a stone mask for every photo, split it into stones and measure them. Per photo "
                    "NAME in --out: NAME_mask.png (0/255, the photo's own size), NAME_instances.png (16-bit "
                    "stone labels, 0 = background), NAME_stones.csv (id, centroid_x, centroid_y, area_px, "
                    "diameter_px (equivalent circle), major_axis_px, minor_axis_px (ellipse fit), touches_edge; "
                    "with --mm-per-pixel also area_mm2, diameter_mm, major_axis_mm, minor_axis_mm), "
                    "NAME_sizes.png (percent passing against diameter, log axis, D10/D50/D80 marked; not written "
                    "when no stone counts) and with --overlay NAME_overlay.jpg. For the run: predictions.csv "
                    "(file, width, height, stone_fraction, stone_count, edge_stones, size_unit, d10, d50, d80) "
                    "and the distribution pooled over all its photos, predictions_sizes.csv (D10, D20 ... D90) "
                    "and predictions_sizes.png.",
        epilog="INPUT: photos, or folders whose .jpg/.jpeg/.png files (any case) are predicted, except names "
               "ending in _label, _mask, _overlay, _instances or _sizes. A photo that cannot be read gets one "
               "error line and the others go on; the exit status is then 1. Outputs that exist already stop the "
               "run before anything is written, unless --overwrite. Stones: touching stones are separated by a "
               "distance-transform watershed (seeds --min-distance apart, pieces joined by a wide neck merged "
               f"back); stones smaller than {stones.MIN_STONE_FRACTION:.2%} of the photo are dropped. stone_count "
               "counts every stone found, edge stones included. D10, D50, D80: the diameters that 10, 50, 80 % "
               "of the material is finer than, read off the cumulative curve of equivalent-circle diameters, "
               "by default weighted by stone AREA (as a sieve weighs by mass, taking mass as proportional to "
               "visible area; --weighting count weighs every stone the same), in mm with --mm-per-pixel, else "
               "in px; stones touching the photo's edge are truncated and left out of every distribution unless "
               "--include-edge. How photos reach the model follows the model: one "
               "trained on squashed photos (fixed input, no scale) gets each photo squashed to its input size; "
               "one trained at a scale F gets each photo resized by F, whole when the resized photo has at most "
               "--batch-size x tile^2 pixels (1 MP by default), else in overlapping tiles blended smoothly. "
               "--scale overrides the model's scale (and runs a squash model at that scale); --tile tiles every "
               "photo (at full resolution for a model with no scale and no --scale).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", type=Path, metavar="MODEL.keras", help="trained model (e.g. runs/<run>/best.keras)")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="photo files or folders of photos")
    parser.add_argument("--out", type=Path, required=True, default=argparse.SUPPRESS, metavar="DIR",
                        help="folder for the masks and predictions.csv")
    parser.add_argument("--threshold", type=float, default=0.5, help="stone where the probability is at least this")
    parser.add_argument("--batch-size", type=int, default=4, help="photos (or tiles) per model call")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=precision.HELP)
    parser.add_argument("--overlay", action="store_true",
                        help="also write NAME_overlay.jpg: the photo with each stone outlined in its own colour")
    parser.add_argument("--mm-per-pixel", type=float, default=None, metavar="MM",
                        help="the photos' resolution: adds millimetre columns and gives D values in mm")
    parser.add_argument("--min-distance", type=float, default=stones.MIN_DISTANCE_FRACTION, metavar="FRACTION",
                        help="watershed seeds at least this share of the photo's shorter side apart (smaller splits "
                             "more)")
    parser.add_argument("--weighting", choices=stones.WEIGHTINGS, default=stones.DEFAULT_WEIGHTING,
                        help="how stones weigh in the size distribution and D values")
    parser.add_argument("--include-edge", action="store_true",
                        help="keep stones touching the photo's edge (truncated) in the size distribution")
    parser.add_argument("--scale", type=float, default=None, metavar="F",
                        help="resize photos by F (0 < F <= 1) for the model instead of the scale it records")
    parser.add_argument("--tile", type=int, nargs="?", const=DEFAULT_TILE, default=None, metavar="SIZE",
                        help=f"run every photo in SIZE x SIZE tiles ({DEFAULT_TILE} if no SIZE is given; a multiple "
                             f"of {OUTPUT_STRIDE}); without --tile, photos too large to run whole use "
                             f"{DEFAULT_TILE} tiles")
    parser.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP, metavar="PX",
                        help="minimum overlap of neighbouring tiles, blended over this width")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument("--workers", type=int, default=cli.cores(),
                        help="threads decoding photos, and threads writing masks")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold <= 1:
        parser.error("--threshold must be between 0 and 1")
    if args.batch_size < 1 or args.workers < 1:
        parser.error("--batch-size and --workers must be at least 1")
    if args.scale is not None and not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale:g}")
    if args.mm_per_pixel is not None and not args.mm_per_pixel > 0:
        parser.error(f"--mm-per-pixel must be greater than 0, got {args.mm_per_pixel:g}")
    if not 0 <= args.min_distance < 1:
        parser.error(f"--min-distance must be at least 0 and below 1 (a share of the shorter side), "
                     f"got {args.min_distance:g}")
    if args.tile is not None and (args.tile < OUTPUT_STRIDE or args.tile % OUTPUT_STRIDE):
        parser.error(f"--tile must be a positive multiple of {OUTPUT_STRIDE} (the network halves it 5 times)")
    if not 0 <= args.tile_overlap < (args.tile or DEFAULT_TILE):
        parser.error("--tile-overlap must be at least 0 and smaller than the tile")
    return args


def inference_for(model: keras.Model, args: argparse.Namespace) -> Inference:
    """How this run feeds `model`, from --scale, --tile, --tile-overlap and --batch-size."""
    return Inference(model, scale=args.scale, tile=args.tile or DEFAULT_TILE, force_tile=args.tile is not None,
                     overlap=args.tile_overlap, batch_size=args.batch_size, name=str(args.model))


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Run the tool; the exit status is 0 when every photo was predicted, 1 otherwise."""
    args = parse_args(argv)
    check_model_file(args.model)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file, not a folder")
    photos = find_photos(args.inputs)
    in_the_way = existing_outputs(photos, args.out, args.overlay)
    if in_the_way and not args.overwrite:
        listed = ", ".join(map(str, in_the_way[:LISTED_OUTPUTS]))
        more = f" and {len(in_the_way) - LISTED_OUTPUTS} more" if len(in_the_way) > LISTED_OUTPUTS else ""
        raise InputError(f"{len(in_the_way)} output(s) exist already ({listed}{more}); nothing was written "
                         "(pass --overwrite to replace them)")
    cli.import_tensorflow()
    resolved = precision.on_this_machine(args.precision)
    print(resolved.describe(), flush=True)
    inference = inference_for(load_model(args.model, resolved), args)

    created_out = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"Predicting {len(photos)} photo(s), {inference.describe()}, with {args.model}, threshold {args.threshold}",
          flush=True)
    started = time.perf_counter()
    done, failures = Run(inference, args, photos).predict()
    if not done:  # nothing to keep: leave --out as it was, so the same command works once the photos are fixed
        if created_out and not any(args.out.iterdir()):
            args.out.rmdir()
        raise InputError(f"none of the {len(photos)} photo(s) could be predicted (each is named above); "
                         "nothing was written")
    rows, tables = zip(*done)
    write_predictions_csv(args.out / PREDICTIONS_CSV, list(rows))
    pooled = write_pooled_sizes(args.out, list(tables), args)
    elapsed = time.perf_counter() - started
    print(f"Wrote {len(rows)} mask(s), stone tables{' and overlays' if args.overlay else ''}, {PREDICTIONS_CSV} and "
          f"{POOLED_SIZES_CSV} to {args.out} in {elapsed:.1f} s ({elapsed / max(1, len(photos)):.2f} s/photo)")
    found = sum(row.stone_count for row in rows)
    if len(pooled):
        print(f"{found} stone(s); pooled over the run ({len(pooled)} in the distribution, by {pooled.by}): "
              f"D10 {pooled.d10:.4g}, D50 {pooled.d50:.4g}, D80 {pooled.d80:.4g} {pooled.unit}")
    else:
        print(f"{found} stone(s); none in the size distribution")
    if failures:
        print(f"{PROG}: {len(failures)} of {len(photos)} photo(s) failed (each is named above) and are not in "
              f"{PREDICTIONS_CSV}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
