"""Masks for new photos: `python -m stoneseg.predict MODEL.keras INPUT... --out DIR`.

How a photo reaches the model follows the model (stoneseg.inference): a model of squashed photos takes
each photo area-resized to its input size, in batches, decoded by stoneseg.io exactly as the record
builder decoded the training photos; a model trained at a scale F takes each photo resized by F, whole
or in overlapping tiles. `--scale` overrides the model's scale, `--tile` forces tiles. The probability
map is upsampled bilinearly to the photo's original, EXIF-oriented size and then thresholded; the mask
is split into stones and measured there (stoneseg.stones). What is written per photo (`NAME_mask.png`,
`NAME_instances.png`, `NAME_stones.csv`, `NAME_stones.geojson`, `NAME_sizes.png`, with --overlay
`NAME_overlay.jpg`) and for the
run (`predictions.csv`, `predictions_sizes.csv`, `predictions_sizes.png`) is stoneseg.outputs', which
stoneseg.predict_beam shares.

Squashed photos are decoded on a thread pool a few batches ahead of the model (OpenCV releases the
GIL), and the upsampling, PNG encoding and writing of finished photos run on a second pool while the
model works on the next batch. A photo run on its own is decoded when its turn comes and, when tiled,
finished before the next one starts, so a tiled photo holds only itself, its map and a batch of tiles.
A tf.data pipeline over `py_function` would wrap the same OpenCV calls with no gain, and would make
"report the bad file by name and go on" awkward.
"""

from __future__ import annotations  # `keras.Model` annotations: Keras is imported once it is needed

import argparse
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stoneseg import cli, io, outputs, precision, stones
from stoneseg.choices import OUTPUT_STRIDE, PRECISIONS
from stoneseg.cli import InputError
from stoneseg.inference import (DEFAULT_TILE, DEFAULT_TILE_OVERLAP, Inference, check_model_file, decode_ahead,
                                full_size_mask, load_model)

if TYPE_CHECKING:
    import keras

PROG = "predict"


# ----------------------------------------------------------------------------- inputs
def find_photos(inputs: list[Path]) -> list[Path]:
    """The photos named, plus the photos directly inside the folders named, in order, each once.

    A folder contributes its files with a photo extension (io.PHOTO_SUFFIXES, any case) except masks
    and outputs (outputs.is_photo_name), so a data folder in the prototype's layout or a previous --out
    folder can be given as is.
    """
    photos, seen = [], set()
    for given in inputs:
        if given.is_dir():
            found = sorted(path for path in given.iterdir() if path.is_file() and outputs.is_photo_name(path.name))
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
    outputs.check_photo_names(photos)
    return photos


# ----------------------------------------------------------------------------- the pipeline
class Run:
    """One prediction run: decodes, feeds the model as `inference` says, hands finished photos to the writers."""

    def __init__(self, inference: Inference, args: argparse.Namespace, photos: list[Path]):
        self.inference, self.args, self.photos = inference, args, photos
        self.settings = outputs.OutputSettings.from_args(args, output=inference.output)
        self.decoders = ThreadPoolExecutor(args.workers, thread_name_prefix="decode")
        self.writers = ThreadPoolExecutor(args.workers, thread_name_prefix="write")
        self.finishing = deque()
        self.rows: dict[Path, tuple[outputs.Prediction, stones.StoneTable]] = {}
        self.failures: list[str] = []
        self.progress = cli.Progress(len(photos), "photo", PROG)

    def predict(self) -> tuple[list[tuple[outputs.Prediction, stones.StoneTable]], list[str]]:
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
        maps = self.inference.batch_maps(np.stack([image for _, image, _ in batch]))
        for (path, _, original), photo_maps in zip(batch, maps):
            self._submit(path, outputs.finish_photo, path, photo_maps, original, self.settings,
                         in_flight=self.args.workers)

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
            maps = self.inference.maps(image)
            mask = full_size_mask(np.ascontiguousarray(maps[..., 0]), original, self.args.threshold)
            # A network split needs its working-resolution maps; a binary model's are freed here.
            maps = maps if self.inference.output != "binary" else None
            # At scale 1 the decoded photo is the full-resolution one an overlay needs.
            photo = image if self.args.overlay and image.shape[:2] == original else None
            del image
            self._submit(path, outputs.write_outputs, path, mask, self.settings, photo, maps,
                         in_flight=0 if tiled else 1)
            del mask, photo, maps

    def _submit(self, path, finish, *arguments, in_flight):
        """Hand a photo to the writers (`finish`: outputs.finish_photo or write_outputs), keeping at most `in_flight`
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
def percents_option(text: str) -> tuple[float, ...]:
    """--percentiles: stones.parse_percents, its error as argparse's."""
    try:
        return stones.parse_percents(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stoneseg.predict",
        description="Predict a stone mask for every photo, split it into stones and measure them. Per photo "
                    "NAME in --out: NAME_mask.png (0/255, the photo's own size), NAME_instances.png (16-bit "
                    "stone labels, 0 = background), NAME_stones.csv (id, centroid_x, centroid_y, area_px, "
                    "diameter_px (equivalent circle), major_axis_px, minor_axis_px (ellipse fit), touches_edge; "
                    "with --mm-per-pixel also area_mm2, diameter_mm, major_axis_mm, minor_axis_mm), "
                    "NAME_stones.geojson (each stone's polygon along its pixel edges, in pixel coordinates x = "
                    "column, y = -row, with its row of NAME_stones.csv as properties), NAME_sizes.png (percent "
                    "passing against diameter, log axis, the --percentiles D values marked, their confidence band "
                    "shaded; not written when no stone counts) and with --overlay NAME_overlay.jpg. For the run: "
                    "predictions.csv (file, width, height, stone_fraction, stone_count, edge_stones, size_unit, "
                    "then for each percent P of --percentiles dP_UNIT, dP_UNIT_low, dP_UNIT_high, UNIT being mm "
                    "or px: d10_mm, d10_mm_low, d10_mm_high, d50_mm ...) and the distribution pooled over all its "
                    "photos, predictions_sizes.csv (percent_passing 10, 20 ... 90 and the --percentiles; "
                    "diameter_px, diameter_px_low, diameter_px_high, and diameter_mm ... with --mm-per-pixel) and "
                    "predictions_sizes.png.",
        epilog="INPUT: photos, or folders whose .jpg/.jpeg/.png files (any case) are predicted, except names "
               "ending in _label, _mask, _overlay, _instances or _sizes. A photo that cannot be read gets one "
               "error line and the others go on; the exit status is then 1. Outputs that exist already stop the "
               "run before anything is written, unless --overwrite. Stones: a model with a boundary or distance "
               "output splits touching stones where it predicts them apart (seeds are the cores its second map "
               f"marks, of at least {stones.MIN_SEED_PIXELS} working pixels, flooded up to its predicted "
               f"boundaries; stones under {stones.MIN_STONE_PIXELS} working pixels, 8/F^2 photo pixels at scale "
               "F, are dropped). A binary model's mask is split by a distance-transform watershed (seeds "
               "--min-distance apart, pieces joined by a wide neck merged back; stones smaller than "
               f"{stones.MIN_STONE_FRACTION:.2%} of the photo are dropped). stone_count "
               "counts every stone found, edge stones included. D values (D10, D50, D80 unless --percentiles): "
               "the diameters that 10, 50, 80 % of the material is finer than, read off the cumulative curve of "
               "equivalent-circle diameters, by default weighted by stone AREA (as a sieve weighs by mass, taking "
               "mass as proportional to visible area; --weighting count weighs every stone the same), in mm with "
               "--mm-per-pixel, else in px (every size column's name ends in its unit); stones touching the "
               "photo's edge are truncated and left out of every distribution unless --include-edge. Each D "
               "value's confidence interval (_low, _high) is a percentile bootstrap over the stones: --bootstrap "
               "resamples of the photo's (the run's, pooled) stones drawn with replacement, seeded by --seed "
               "(and the photo's file name), so a run is reproducible; it covers the sampling of stones only, "
               "not the model's segmentation errors. How photos reach the model follows the model: one "
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
                        help="a binary model's watershed seeds at least this share of the photo's shorter side apart "
                             "(smaller splits more; a boundary or distance model ignores it)")
    parser.add_argument("--weighting", choices=stones.WEIGHTINGS, default=stones.DEFAULT_WEIGHTING,
                        help="how stones weigh in the size distribution and D values")
    parser.add_argument("--include-edge", action="store_true",
                        help="keep stones touching the photo's edge (truncated) in the size distribution")
    parser.add_argument("--percentiles", dest="percents", type=percents_option, metavar="P,P...",
                        default=",".join(f"{percent:g}" for percent in stones.DEFAULT_PERCENTS),
                        help="the D values reported, in mm with --mm-per-pixel, else px (e.g. 16,50,84,96; each "
                             "strictly between 0 and 100)")
    parser.add_argument("--ci", type=float, default=stones.DEFAULT_LEVEL, metavar="LEVEL",
                        help="the level of each D value's confidence interval (0 < LEVEL < 1)")
    parser.add_argument("--bootstrap", type=int, default=stones.DEFAULT_RESAMPLES, metavar="N",
                        help="bootstrap resamples of the stones behind the intervals (0: no intervals)")
    parser.add_argument("--seed", type=int, default=stones.DEFAULT_SEED,
                        help="the bootstrap's random seed: the same seed gives the same intervals")
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
    if not 0 < args.ci < 1:
        parser.error(f"--ci must be strictly between 0 and 1, got {args.ci:g}")
    if args.bootstrap < 0 or args.seed < 0:
        parser.error(f"--bootstrap and --seed must be at least 0, got {args.bootstrap} and {args.seed}")
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
    outputs.refuse_existing_outputs(photos, args.out, args.overlay, args.overwrite)
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
    settings = outputs.OutputSettings.from_args(args, output=inference.output)
    pooled = outputs.write_run(args.out, list(rows), list(tables), settings)
    elapsed = time.perf_counter() - started
    print(f"Wrote {len(rows)} mask(s), stone tables{' and overlays' if args.overlay else ''}, {outputs.PREDICTIONS_CSV} and "
          f"{outputs.POOLED_SIZES_CSV} to {args.out} in {elapsed:.1f} s ({elapsed / max(1, len(photos)):.2f} s/photo)")
    print(outputs.run_summary(list(rows), pooled, settings))
    if failures:
        print(f"{PROG}: {len(failures)} of {len(photos)} photo(s) failed (each is named above) and are not in "
              f"{outputs.PREDICTIONS_CSV}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
