"""What prediction writes for a photo and for a run: the one place every front end that predicts shares
(stoneseg.predict, and the batch pipeline of issue 21), so they all write the same files from the same masks.

Per photo NAME in the output folder: `NAME_mask.png` (one channel, 0/255, the photo's width x height),
`NAME_instances.png` (16-bit stone labels, 0 = background), `NAME_stones.csv` (one row per stone),
`NAME_sizes.png` (its size curve; none when no stone counts) and, with overlay, `NAME_overlay.jpg` (each
stone outlined in its own colour). For the run: `predictions.csv` (one `Prediction` row per photo, in input
order) and the size distribution pooled over every photo, `predictions_sizes.csv` and `predictions_sizes.png`.

What a photo's outputs depend on beyond its mask is one small frozen `OutputSettings` (built from a command's
arguments), so a pipeline can ship it to its workers.
"""

from __future__ import annotations

import argparse
import csv
import io as bytes_io
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from stoneseg import io, stones
from stoneseg.cli import InputError
from stoneseg.files import write_atomically
from stoneseg.inference import full_size_mask

# What is written per photo NAME, by kind; "sizes" only when the photo has a stone in its distribution,
# "overlay" only with overlay.
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
class OutputSettings:
    """What a photo's outputs depend on beyond its mask (each field is the command's option of that name):
    out, the folder; threshold, stone where the probability is at least this; overlay, also write
    NAME_overlay.jpg; mm_per_pixel, millimetre columns and D values in mm; min_distance, watershed seeds
    this share of the shorter side apart; weighting and include_edge, how stones count in a distribution."""
    out: Path
    threshold: float
    overlay: bool
    mm_per_pixel: float | None
    min_distance: float
    weighting: str
    include_edge: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OutputSettings:
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})


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


# ----------------------------------------------------------------------------- names and paths
def is_photo_name(name: str) -> bool:
    """Whether a folder scan takes the file `name`: a photo extension (io.PHOTO_SUFFIXES, any case), and not
    a mask or an output (names ending in _label, _mask, _overlay, _instances or _sizes)."""
    path = Path(name)
    return path.suffix.lower() in io.PHOTO_SUFFIXES and not path.stem.lower().endswith(DERIVED_TAGS)


def check_photo_names(photos: list[str]) -> None:
    """An InputError when two photos would write the same outputs, or one would write over the run's."""
    clashes = {}
    for photo in photos:
        clashes.setdefault(Path(photo).stem, []).append(str(photo))
    clashes = [paths for paths in clashes.values() if len(paths) > 1]
    if clashes:
        raise InputError("photos with the same name would write the same outputs: "
                         + "; ".join(" and ".join(paths) for paths in clashes))
    for photo in photos:
        if Path(photo).stem == RUN_NAME:
            raise InputError(f"{photo}: a photo named {RUN_NAME!r} would write over the run's {POOLED_SIZES_PNG}; "
                             "rename it")


def output_paths(photo: str | Path, out: Path, overlay: bool) -> dict[str, Path]:
    """The files `photo` may write, by kind (PHOTO_SUFFIXES): the overlay only if asked for."""
    stem = Path(photo).stem
    return {kind: out / f"{stem}{suffix}" for kind, suffix in PHOTO_SUFFIXES.items() if overlay or kind != "overlay"}


def existing_outputs(photos: list, out: Path, overlay: bool) -> list[Path]:
    """The outputs of this run that already exist."""
    planned = [path for photo in photos for path in output_paths(photo, out, overlay).values()]
    planned += [out / PREDICTIONS_CSV, out / POOLED_SIZES_CSV, out / POOLED_SIZES_PNG]
    return [path for path in planned if path.exists()]


def refuse_existing_outputs(photos: list, out: Path, overlay: bool, overwrite: bool) -> None:
    """An InputError naming the outputs of this run that exist already, unless `overwrite`."""
    in_the_way = existing_outputs(photos, out, overlay)
    if in_the_way and not overwrite:
        listed = ", ".join(map(str, in_the_way[:LISTED_OUTPUTS]))
        more = f" and {len(in_the_way) - LISTED_OUTPUTS} more" if len(in_the_way) > LISTED_OUTPUTS else ""
        raise InputError(f"{len(in_the_way)} output(s) exist already ({listed}{more}); nothing was written "
                         "(pass --overwrite to replace them)")


# ----------------------------------------------------------------------------- the size distribution
def distribution_of(tables: stones.StoneTable | list[stones.StoneTable], settings: OutputSettings,
                    unit: str | None = None) -> stones.Distribution:
    """The size distribution of one photo's stones or of a run's, as --weighting and --include-edge say
    (stoneseg.stones.size_distribution: equivalent-circle diameters, by area unless --weighting count,
    stones cut by the photo's edge left out unless --include-edge); in mm with --mm-per-pixel."""
    return stones.size_distribution(tables, by=settings.weighting, include_edge=settings.include_edge, unit=unit)


def curve_title(name: str, settings: OutputSettings) -> str:
    """A size curve's title: what it shows, and whether edge stones are in it."""
    return f"{name}, {'edge stones included' if settings.include_edge else 'edge stones left out'}"


# ----------------------------------------------------------------------------- masks, stones and a photo's files
def find_stones(path: str | Path, mask: np.ndarray, settings: OutputSettings) -> tuple[np.ndarray, stones.StoneTable]:
    """One photo's full-size mask split into stones (uint16 labels) and measured (--min-distance,
    --mm-per-pixel). A mask with no background at all is an io.ImageError naming the photo."""
    try:
        labels, boxes = stones.split_stones(mask, settings.min_distance * min(mask.shape), return_boxes=True)
    except ValueError as error:
        raise io.ImageError(str(path), f"cannot split the predicted mask into stones: {error}") from None
    return labels, stones.measure_stones(labels, settings.mm_per_pixel, boxes)


def finish_photo(path: str | Path, probability: np.ndarray, original: tuple[int, int], settings: OutputSettings,
                 photo: np.ndarray | None = None) -> tuple[Prediction, stones.StoneTable]:
    """Upsample and threshold one photo's probabilities, then `write_outputs`."""
    return write_outputs(path, full_size_mask(probability, original, settings.threshold), settings, photo)


def write_outputs(path: str | Path, mask: np.ndarray, settings: OutputSettings,
                  photo: np.ndarray | None = None) -> tuple[Prediction, stones.StoneTable]:
    """Split and measure one photo's full-size 0/255 mask, write its files to the output folder, return its
    row and its stone table (for the run's pooled distribution). Nothing is written for a mask that cannot
    be split.

    `photo` is the full-resolution photo when the caller has it; the overlay reads it otherwise. That is
    a second decode of the file, on purpose: the model's input must come from the reduced decode the
    records were made with, and only the overlay needs every pixel.
    """
    labels, table = find_stones(path, mask, settings)
    return write_photo(path, mask, labels, table, settings, photo), table


def write_photo(path: str | Path, mask: np.ndarray, labels: np.ndarray, table: stones.StoneTable,
                settings: OutputSettings, photo: np.ndarray | None = None) -> Prediction:
    """Write one photo's mask, instances, stone table, size curve (and overlay) to the output folder; return
    its row. `path` names the photo in the row as given (a local path, or a URL a pipeline read)."""
    paths = output_paths(path, settings.out, settings.overlay)
    write_atomically(paths["mask"], io.encode_png(mask))
    write_atomically(paths["instances"], stones.encode_instances_png(labels))
    write_atomically(paths["stones"], table.csv())
    distribution = distribution_of(table, settings)
    curve = stones.size_curve_png(distribution, curve_title(Path(path).name, settings))
    if curve is None:
        paths["sizes"].unlink(missing_ok=True)  # an older run's curve would be a wrong answer
    else:
        write_atomically(paths["sizes"], curve)
    if settings.overlay:
        photo = io.read_photo_full(path) if photo is None else photo
        write_atomically(paths["overlay"], io.encode_jpeg(stones.draw_stones(photo, labels), OVERLAY_QUALITY))
    height, width = mask.shape
    return Prediction(str(path), width, height, round(cv2.countNonZero(mask) / mask.size, 6), len(table),
                      int(table.columns["touches_edge"].sum()), distribution.unit,
                      *(None if d is None else round(d, 4) for d in (distribution.d10, distribution.d50, distribution.d80)))


# ----------------------------------------------------------------------------- the run's files
def write_predictions_csv(path: Path, rows: list[Prediction]) -> None:
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([field.name for field in fields(Prediction)])
    writer.writerows(["" if value is None else value for value in astuple(row)] for row in rows)
    write_atomically(path, text.getvalue().encode())


def write_pooled_sizes(out: Path, tables: list[stones.StoneTable], settings: OutputSettings) -> stones.Distribution:
    """Write the run's pooled distribution of `tables` (one per photo): POOLED_SIZES_CSV (percent passing, the
    size in px, and in mm with --mm-per-pixel; no size when no stone counts) and POOLED_SIZES_PNG (its curve;
    removed when there is none). Returns the distribution."""
    in_pixels = distribution_of(tables, settings, unit="px")
    in_mm = distribution_of(tables, settings, unit="mm") if settings.mm_per_pixel is not None else None
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["percent_passing", "diameter_px"] + (["diameter_mm"] if in_mm else []))
    if len(in_pixels):
        for percent in POOLED_PERCENTS:
            sizes = [in_pixels.size_passing(percent)] + ([in_mm.size_passing(percent)] if in_mm else [])
            writer.writerow([percent, *(f"{size:.6g}" for size in sizes)])
    write_atomically(out / POOLED_SIZES_CSV, text.getvalue().encode())
    pooled = in_mm or in_pixels
    curve = stones.size_curve_png(pooled, curve_title(f"all {len(tables)} photo(s)", settings))
    if curve is None:
        (out / POOLED_SIZES_PNG).unlink(missing_ok=True)  # an older run's curve would be a wrong answer
    else:
        write_atomically(out / POOLED_SIZES_PNG, curve)
    return pooled


def write_run(out: Path, rows: list[Prediction], tables: list[stones.StoneTable],
              settings: OutputSettings) -> stones.Distribution:
    """Write the run's files, predictions.csv and the pooled distribution, from the photos done (in input
    order); returns the pooled distribution."""
    write_predictions_csv(out / PREDICTIONS_CSV, rows)
    return write_pooled_sizes(out, tables, settings)


def run_summary(rows: list[Prediction], pooled: stones.Distribution) -> str:
    """The closing line about the stones: how many were found, and the pooled D values."""
    found = sum(row.stone_count for row in rows)
    if len(pooled):
        return (f"{found} stone(s); pooled over the run ({len(pooled)} in the distribution, by {pooled.by}): "
                f"D10 {pooled.d10:.4g}, D50 {pooled.d50:.4g}, D80 {pooled.d80:.4g} {pooled.unit}")
    return f"{found} stone(s); none in the size distribution"
