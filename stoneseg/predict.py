"""Masks for new photos: `python -m stoneseg.predict MODEL.keras INPUT... --out DIR`.

Each photo is decoded by stoneseg.io exactly as the record builder decoded the training photos
(reduced JPEG decode, area resize to the model's input size). The model's probability map is
upsampled bilinearly to the photo's original, EXIF-oriented size and then thresholded. Per photo:
`NAME_mask.png` (one channel, 0/255, the photo's width x height) and, with --overlay,
`NAME_overlay.jpg`; for the whole run `predictions.csv`. `--tile` instead runs the fully
convolutional network over overlapping tiles of the full-resolution photo.

Decoding runs on a thread pool a few batches ahead of the model (OpenCV releases the GIL), and the
upsampling, PNG encoding and writing of finished photos run on a second pool while the model works
on the next batch. A tf.data pipeline over `py_function` would wrap the same OpenCV calls with no
gain, and would make "report the bad file by name and go on" awkward.
"""

from __future__ import annotations  # `keras.Model` annotations: Keras is imported once it is needed

import argparse
import csv
import io as bytes_io
import math
import sys
import time
import zipfile
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
DEFAULT_TILE = 512
DEFAULT_TILE_OVERLAP = 128
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


# ----------------------------------------------------------------------------- the model
def check_model_file(path: Path) -> None:
    """An InputError unless `path` can be a .keras model file (checked before Keras is imported)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras model file (a .keras file is a zip archive, this is not)")


def load_model(path: Path) -> keras.Model:
    """The saved model, loaded with safe_mode=True; it must map images to one probability per pixel."""
    import keras

    import stoneseg.model  # noqa: F401  registers the layers of our own that a model file may hold

    check_model_file(path)
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, OSError... for a bad file
        raise InputError(f"{path}: cannot be loaded as a Keras model ({type(error).__name__}: {error})") from None
    input_shape, output_shape = model.input_shape, model.output_shape
    if len(input_shape) != 4 or input_shape[-1] != 3 or output_shape[1:] != (*input_shape[1:3], 1):
        raise InputError(f"{path}: expected a model from RGB images (N, H, W, 3) to one probability per pixel "
                         f"(N, H, W, 1), got {input_shape} -> {output_shape}")
    return model


def model_input_size(model: keras.Model) -> tuple[int, int] | None:
    """The (height, width) the model takes, or None if it takes any size."""
    height, width = model.input_shape[1:3]
    return None if height is None or width is None else (height, width)


def tile_model(model: keras.Model, tile: int) -> keras.Model:
    """The same network with the same weights, rebuilt for tile x tile inputs (it is fully convolutional)."""
    import keras

    tiled = keras.models.clone_model(model, input_tensors=keras.Input((tile, tile, 3), dtype=model.inputs[0].dtype))
    tiled.set_weights(model.get_weights())
    return tiled


def run_model(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities (N, H, W) float32 for images (N, H, W, 3), N <= batch_size.

    A short batch is padded to `batch_size`, so the model's predict function is traced only once.
    """
    count = len(images)
    if count < batch_size:
        images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
    return np.asarray(model.predict_on_batch(images), np.float32)[:count, ..., 0]


# ----------------------------------------------------------------------------- tiled inference
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile offsets along one axis, neighbours overlapping by at least `overlap` pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [int(start) for start in np.round(np.linspace(0, length - tile, count))]


def blend_windows(length: int, starts: list[int], tile: int, overlap: int) -> list[np.ndarray]:
    """Each tile's weights along one axis, adding up to exactly 1 at every pixel.

    A tile's window ramps up smoothly (raised cosine) over `overlap` pixels on each side where another
    tile overlaps it, so the pixels near a tile's edge, which the network sees with little context,
    count least. The product of a row and a column window weights a tile's 2-D probabilities.
    """
    ramp = np.sin(np.pi / 2 * (np.arange(overlap) + 0.5) / overlap) ** 2  # from near 0 up to near 1
    windows = []
    for index, start in enumerate(starts):
        window = np.ones(min(tile, length - start))  # only a lone tile can be shorter than `tile`
        if overlap and index > 0:
            window[:overlap] = ramp
        if overlap and index < len(starts) - 1:
            window[-overlap:] = np.minimum(window[-overlap:], ramp[::-1])
        windows.append(window)
    total = np.zeros(length)
    for start, window in zip(starts, windows):
        total[start:start + len(window)] += window
    return [(window / total[start:start + len(window)]).astype(np.float32) for start, window in zip(starts, windows)]


def tiled_probability(model: keras.Model, photo: np.ndarray, overlap: int, batch_size: int) -> np.ndarray:
    """The (H, W) float32 probability map of a full-resolution photo from overlapping tiles.

    `model` takes square tiles (see tile_model). Tiles are run `batch_size` at a time and blended
    into the one photo-sized map, so memory beyond the photo and the map is bounded by the tile size.
    A photo smaller than a tile is mirrored out to the tile size.
    """
    tile = model.input_shape[1]
    height, width = photo.shape[:2]
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_windows = blend_windows(height, rows, tile, overlap)
    column_windows = blend_windows(width, columns, tile, overlap)
    positions = [(row, column) for row in range(len(rows)) for column in range(len(columns))]
    probability = np.zeros((height, width), np.float32)
    for first in range(0, len(positions), batch_size):
        batch = positions[first:first + batch_size]
        tiles = np.stack([_cut_tile(photo, rows[row], columns[column], tile) for row, column in batch])
        for (row, column), tile_probability in zip(batch, run_model(model, tiles, batch_size)):
            row_window, column_window = row_windows[row], column_windows[column]
            y, x = rows[row], columns[column]
            weighted = tile_probability[:len(row_window), :len(column_window)] * np.outer(row_window, column_window)
            probability[y:y + len(row_window), x:x + len(column_window)] += weighted
    return probability


def _cut_tile(photo: np.ndarray, y: int, x: int, tile: int) -> np.ndarray:
    crop = photo[y:y + tile, x:x + tile]
    short_y, short_x = tile - crop.shape[0], tile - crop.shape[1]
    if short_y or short_x:
        crop = cv2.copyMakeBorder(crop, 0, short_y, 0, short_x, cv2.BORDER_REFLECT_101)
    return crop


# ----------------------------------------------------------------------------- masks and what is written
def full_size_mask(probability: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """The uint8 0/255 mask of `size` (height, width): the probability map upsampled bilinearly to
    that size, then thresholded (stone where probability >= threshold, as keras.metrics.BinaryIoU)."""
    height, width = size
    if probability.shape != (height, width):
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.compare(probability, threshold, cv2.CMP_GE)


def stone_statistics(mask: np.ndarray) -> tuple[float, int]:
    """Stone share of the pixels, and the number of 8-connected stone regions of at least
    MIN_STONE_FRACTION of the photo. Touching stones are one region unless the mask separates them."""
    stone_fraction = cv2.countNonZero(mask) / mask.size
    # Labels, then areas by bincount: twice as fast as connectedComponentsWithStats on 3456x4806 masks.
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    areas = np.bincount(labels.ravel(), minlength=count)[1:]
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
    """Upsample and threshold one photo's probabilities, write its mask (and overlay), return its row.

    `photo` is the full-resolution photo when the caller has it; the overlay reads it otherwise. That is
    a second decode of the file, on purpose: the model's input must come from the reduced decode the
    records were made with, and only the overlay needs every pixel.
    """
    mask = full_size_mask(probability, original, threshold)
    mask_path, *overlay_path = output_paths(path, out, overlay)
    write_atomically(mask_path, io.encode_png(mask))
    stone_fraction, stone_count = stone_statistics(mask)
    if overlay:
        photo = io.read_photo_full(path) if photo is None else photo
        write_atomically(overlay_path[0], io.encode_jpeg(draw_overlay(photo, mask), OVERLAY_QUALITY))
    return Prediction(str(path), original[1], original[0], round(stone_fraction, 6), stone_count)


# ----------------------------------------------------------------------------- the pipeline
def decode_ahead(pool: ThreadPoolExecutor, decode, items: list, depth: int):
    """Yield (item, decode(item)) in order, or (item, the io.ImageError), keeping `depth` decodes
    running ahead on `pool`."""
    pending = deque()
    for item in items:
        pending.append((item, pool.submit(decode, item)))
        if len(pending) > depth:
            yield _outcome(*pending.popleft())
    while pending:
        yield _outcome(*pending.popleft())


def _outcome(item, future):
    try:
        return item, future.result()
    except io.ImageError as error:
        return item, error


class Run:
    """One prediction run: decodes ahead, feeds the model, hands finished photos to the writer pool."""

    def __init__(self, model: keras.Model, args: argparse.Namespace, photos: list[Path]):
        self.model, self.args, self.photos = model, args, photos
        self.decoders = ThreadPoolExecutor(args.workers, thread_name_prefix="decode")
        self.writers = ThreadPoolExecutor(args.workers, thread_name_prefix="write")
        self.finishing = deque()
        self.rows: dict[Path, Prediction] = {}
        self.failures: list[str] = []
        self.progress = cli.Progress(len(photos), "photo", PROG)

    def predict(self) -> tuple[list[Prediction], list[str]]:
        """Rows of the photos done, in input order, and one error line per photo that failed."""
        try:
            if self.args.tile:
                self._predict_tiled()
            else:
                self._predict_resized()
            while self.finishing:
                self._collect()
        finally:
            self.decoders.shutdown(wait=True, cancel_futures=True)
            self.writers.shutdown(wait=True, cancel_futures=True)
        return [self.rows[path] for path in self.photos if path in self.rows], self.failures

    def _predict_resized(self):
        size, batch_size = model_input_size(self.model), self.args.batch_size
        batch = []
        decode = partial(io.read_photo, size=size)
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
        probabilities = run_model(self.model, np.stack([image for _, image, _ in batch]), self.args.batch_size)
        for (path, _, original), probability in zip(batch, probabilities):
            self._finish(path, probability, original, in_flight=self.args.workers)

    def _predict_tiled(self):
        model = tile_model(self.model, self.args.tile)
        for path, photo in decode_ahead(self.decoders, io.read_photo_full, self.photos, depth=1):
            if isinstance(photo, io.ImageError):
                self._fail(path, photo)
                continue
            probability = tiled_probability(model, photo, self.args.tile_overlap, self.args.batch_size)
            self._finish(path, probability, photo.shape[:2], photo=photo, in_flight=1)

    def _finish(self, path, probability, original, in_flight, photo=None):
        """Hand the photo to the writers, keeping at most `in_flight` full-resolution jobs queued."""
        job = self.writers.submit(finish_photo, path, probability, original, self.args.out, self.args.threshold,
                                  self.args.overlay, photo)
        self.finishing.append((path, job))
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
               f"least {MIN_STONE_FRACTION:.2%} of the photo. --tile: the network sees the photo at full "
               "resolution, in overlapping tiles blended smoothly; this suits a model trained at the photos' "
               "own scale, not one trained on whole photos shrunk to its input size (the default records).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", type=Path, metavar="MODEL.keras", help="trained model (e.g. runs/<run>/best.keras)")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="photo files or folders of photos")
    parser.add_argument("--out", type=Path, required=True, default=argparse.SUPPRESS, metavar="DIR",
                        help="folder for the masks and predictions.csv")
    parser.add_argument("--threshold", type=float, default=0.5, help="stone where the probability is at least this")
    parser.add_argument("--batch-size", type=int, default=4, help="photos (or tiles) per model call")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.jpg: stones tinted and outlined")
    parser.add_argument("--tile", type=int, nargs="?", const=DEFAULT_TILE, default=None, metavar="SIZE",
                        help=f"full-resolution tiled inference with SIZE x SIZE tiles ({DEFAULT_TILE} if no SIZE "
                             f"is given; a multiple of {OUTPUT_STRIDE})")
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
    if args.tile is not None and (args.tile < OUTPUT_STRIDE or args.tile % OUTPUT_STRIDE):
        parser.error(f"--tile must be a positive multiple of {OUTPUT_STRIDE} (the network halves it 5 times)")
    if args.tile is not None and not 0 <= args.tile_overlap < args.tile:
        parser.error("--tile-overlap must be at least 0 and smaller than the tile")
    return args


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
    model = load_model(args.model)
    if args.tile is None and model_input_size(model) is None:
        raise InputError(f"{args.model} takes images of any size, so there is no size to resize photos to; "
                         "use --tile")

    created_out = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    how = f"in {args.tile}x{args.tile} tiles at full resolution" if args.tile else \
        "at {}x{}".format(*model_input_size(model))
    print(f"Predicting {len(photos)} photo(s) {how} with {args.model}, threshold {args.threshold}", flush=True)
    started = time.perf_counter()
    rows, failures = Run(model, args, photos).predict()
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
