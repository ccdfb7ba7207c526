"""Masks for new photos: `python -m stoneseg.predict MODEL.keras INPUT... --out DIR`.

How a photo reaches the model follows the model (stoneseg.inference): a model of squashed photos takes
each photo area-resized to its input size, in batches, decoded by stoneseg.io exactly as the record
builder decoded the training photos; a model trained at a scale F takes each photo resized by F, whole
or in overlapping tiles. `--scale` overrides the model's scale, `--tile` forces tiles. The probability
map is upsampled bilinearly to the photo's original, EXIF-oriented size and then thresholded. Per photo:
`NAME_mask.png` (one channel, 0/255, the photo's width x height) and, with --overlay,
`NAME_overlay.jpg`; for the whole run `predictions.csv`.

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

from stoneseg import cli, io
from stoneseg.choices import OUTPUT_STRIDE
from stoneseg.cli import InputError
from stoneseg.files import write_atomically
from stoneseg.inference import (DEFAULT_TILE, DEFAULT_TILE_OVERLAP, Inference, check_model_file, decode_ahead,
                                full_size_mask, load_model)

if TYPE_CHECKING:
    import keras

PROG = "predict"
MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.jpg"
PREDICTIONS_CSV = "predictions.csv"
LISTED_OUTPUTS = 10  # outputs in the way named in the error line
# Folder scans skip the prototype's masks (X_label.jpg) and this tool's own outputs.
DERIVED_TAGS = ("_label", "_mask", "_overlay")
# A connected stone region counts as a stone when it covers at least this share of the photo:
# 1,661 pixels (about 41 x 41) of a 3456 x 4806 photo, about 7 pixels of a 256 x 256 model output.
# Smaller specks are noise at the model's resolution; they still count in the stone fraction.
MIN_STONE_FRACTION = 1e-4
LABEL_ROWS = 256  # rows of stone labels counted at a time
OVERLAY_QUALITY = 90
OVERLAY_TINT = np.array([0, 255, 90], np.float32)  # RGB, blended into stone pixels
OVERLAY_TINT_WEIGHT = 0.35
OVERLAY_OUTLINE = (255, 230, 0)  # RGB
# The outline is one pixel wide per this many pixels of the photo's shorter side (at least one pixel).
OVERLAY_OUTLINE_PIXELS_PER_WIDTH = 500


@dataclass(frozen=True)
class Prediction:
    """One row of predictions.csv."""
    file: str
    width: int
    height: int
    stone_fraction: float
    stone_count: int


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
    return photos


def _is_photo_name(path: Path) -> bool:
    return path.suffix.lower() in io.PHOTO_SUFFIXES and not path.stem.lower().endswith(DERIVED_TAGS)


def output_paths(photo: Path, out: Path, overlay: bool) -> list[Path]:
    """The files written for `photo`: its mask, and its overlay if asked for."""
    paths = [out / f"{photo.stem}{MASK_SUFFIX}"]
    return paths + [out / f"{photo.stem}{OVERLAY_SUFFIX}"] if overlay else paths


def existing_outputs(photos: list[Path], out: Path, overlay: bool) -> list[Path]:
    """The outputs of this run that already exist."""
    planned = [path for photo in photos for path in output_paths(photo, out, overlay)] + [out / PREDICTIONS_CSV]
    return [path for path in planned if path.exists()]


def write_predictions_csv(path: Path, rows: list[Prediction]) -> None:
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([field.name for field in fields(Prediction)])
    writer.writerows(astuple(row) for row in rows)
    write_atomically(path, text.getvalue().encode())


# ----------------------------------------------------------------------------- masks and what is written
def stone_statistics(mask: np.ndarray) -> tuple[float, int]:
    """Stone share of the pixels, and the number of 8-connected stone regions of at least
    MIN_STONE_FRACTION of the photo. Touching stones are one region unless the mask separates them."""
    stone_fraction = cv2.countNonZero(mask) / mask.size
    # Labels, then areas by bincount: twice as fast as connectedComponentsWithStats on 3456x4806 masks.
    # bincount widens int32 labels to int64; a band of rows at a time, that is no photo-sized copy.
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    areas = sum(np.bincount(labels[top:top + LABEL_ROWS].ravel(), minlength=count)
                for top in range(0, len(labels), LABEL_ROWS))[1:]
    return stone_fraction, int(np.count_nonzero(areas >= max(1.0, MIN_STONE_FRACTION * mask.size)))


def draw_overlay(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The RGB photo with its stones tinted and outlined (line width scaled to the photo)."""
    tinted = cv2.addWeighted(photo, 1 - OVERLAY_TINT_WEIGHT, np.broadcast_to(OVERLAY_TINT.astype(np.uint8), photo.shape),
                             OVERLAY_TINT_WEIGHT, 0)
    overlay = photo.copy()
    np.copyto(overlay, tinted, where=mask[..., None] > 0)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(photo.shape[:2]) / OVERLAY_OUTLINE_PIXELS_PER_WIDTH))
    cv2.drawContours(overlay, contours, -1, OVERLAY_OUTLINE, thickness, cv2.LINE_AA)
    return overlay


def finish_photo(path: Path, probability: np.ndarray, original: tuple[int, int], out: Path, threshold: float,
                 overlay: bool, photo: np.ndarray | None = None) -> Prediction:
    """Upsample and threshold one photo's probabilities, write its mask (and overlay), return its row."""
    return write_outputs(path, full_size_mask(probability, original, threshold), out, overlay, photo)


def write_outputs(path: Path, mask: np.ndarray, out: Path, overlay: bool, photo: np.ndarray | None = None) -> Prediction:
    """Write one photo's full-size 0/255 mask (and overlay), return its row.

    `photo` is the full-resolution photo when the caller has it; the overlay reads it otherwise. That is
    a second decode of the file, on purpose: the model's input must come from the reduced decode the
    records were made with, and only the overlay needs every pixel.
    """
    original = mask.shape
    mask_path, *overlay_path = output_paths(path, out, overlay)
    write_atomically(mask_path, io.encode_png(mask))
    stone_fraction, stone_count = stone_statistics(mask)
    if overlay:
        photo = io.read_photo_full(path) if photo is None else photo
        write_atomically(overlay_path[0], io.encode_jpeg(draw_overlay(photo, mask), OVERLAY_QUALITY))
    return Prediction(str(path), original[1], original[0], round(stone_fraction, 6), stone_count)


# ----------------------------------------------------------------------------- the pipeline
class Run:
    """One prediction run: decodes, feeds the model as `inference` says, hands finished photos to the writers."""

    def __init__(self, inference: Inference, args: argparse.Namespace, photos: list[Path]):
        self.inference, self.args, self.photos = inference, args, photos
        self.decoders = ThreadPoolExecutor(args.workers, thread_name_prefix="decode")
        self.writers = ThreadPoolExecutor(args.workers, thread_name_prefix="write")
        self.finishing = deque()
        self.rows: dict[Path, Prediction] = {}
        self.failures: list[str] = []
        self.progress = cli.Progress(len(photos), "photo", PROG)

    def predict(self) -> tuple[list[Prediction], list[str]]:
        """Rows of the photos done, in input order, and one error line per photo that failed."""
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
            self._submit(path, finish_photo, path, probability, original, self.args.out, self.args.threshold,
                         self.args.overlay, in_flight=self.args.workers)

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
            self._submit(path, write_outputs, path, mask, self.args.out, self.args.overlay, photo,
                         in_flight=0 if tiled else 1)
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
        description="Predict a stone mask for every photo: NAME_mask.png (0/255, the photo's own size) in "
                    "--out, plus predictions.csv (file, width, height, stone_fraction, stone_count).",
        epilog="INPUT: photos, or folders whose .jpg/.jpeg/.png files (any case) are predicted, except names "
               "ending in _label, _mask or _overlay. A photo that cannot be read gets one error line and the "
               "others go on; the exit status is then 1. Outputs that exist already stop the run before "
               "anything is written, unless --overwrite. stone_count counts 8-connected stone regions of at "
               f"least {MIN_STONE_FRACTION:.2%} of the photo. How photos reach the model follows the model: one "
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
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.jpg: stones tinted and outlined")
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
    inference = inference_for(load_model(args.model), args)

    created_out = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"Predicting {len(photos)} photo(s), {inference.describe()}, with {args.model}, threshold {args.threshold}",
          flush=True)
    started = time.perf_counter()
    rows, failures = Run(inference, args, photos).predict()
    if not rows:  # nothing to keep: leave --out as it was, so the same command works once the photos are fixed
        if created_out and not any(args.out.iterdir()):
            args.out.rmdir()
        raise InputError(f"none of the {len(photos)} photo(s) could be predicted (each is named above); "
                         "nothing was written")
    write_predictions_csv(args.out / PREDICTIONS_CSV, rows)
    elapsed = time.perf_counter() - started
    print(f"Wrote {len(rows)} mask(s){' and overlays' if args.overlay else ''} and {PREDICTIONS_CSV} to {args.out} "
          f"in {elapsed:.1f} s ({elapsed / max(1, len(photos)):.2f} s/photo)")
    if failures:
        print(f"{PROG}: {len(failures)} of {len(photos)} photo(s) failed (each is named above) and are not in "
              f"{PREDICTIONS_CSV}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
