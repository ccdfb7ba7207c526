"""What prediction writes for a photo and for a run: the one place every front end that predicts shares
(stoneseg.predict, and the batch pipeline of issue 21), so they all write the same files from the same masks.

Per photo NAME in the output folder: `NAME_mask.png` (one channel, 0/255, the photo's width x height),
`NAME_instances.png` (16-bit stone labels, 0 = background), `NAME_stones.csv` (one row per stone),
`NAME_stones.geojson` (the stones as polygons, stoneseg.geojson), `NAME_sizes.png` (its size curve with the
D values' confidence band; none when no stone counts) and, with overlay, `NAME_overlay.jpg` (each stone
outlined in its own colour). For the run: `predictions.csv` (one `Prediction` row per photo, in input order)
and the size distribution pooled over every photo, `predictions_sizes.csv` and `predictions_sizes.png`.

D values (the sizes that `percents` of the material is finer than) and their confidence intervals are
stoneseg.stones.size_values: a seeded bootstrap over each photo's stones (over the run's, pooled). Every
size column names its unit: d50_mm, d50_mm_low, d50_mm_high (or _px), diameter_px, diameter_mm.

What a photo's outputs depend on beyond its mask is one small frozen `OutputSettings` (built from a command's
arguments), so a pipeline can ship it to its workers.
"""

from __future__ import annotations

import argparse
import csv
import io as bytes_io
import zlib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from stoneseg import geojson, io, stones
from stoneseg.cli import InputError
from stoneseg.files import write_atomically
from stoneseg.inference import full_size_mask

# What is written per photo NAME, by kind; "sizes" only when the photo has a stone in its distribution,
# "overlay" only with overlay.
PHOTO_SUFFIXES = {"mask": "_mask.png", "instances": "_instances.png", "stones": "_stones.csv",
                  "polygons": "_stones.geojson", "sizes": "_sizes.png", "overlay": "_overlay.jpg"}
RUN_NAME = "predictions"  # the run's own files: predictions.csv, and the pooled distribution's two files
PREDICTIONS_CSV = f"{RUN_NAME}.csv"
# The run's pooled distribution: its curve, and the sizes that 10, 20, ... 90 % of the material is finer than
# (and the percents asked for), each with its confidence interval.
POOLED_SIZES_CSV = f"{RUN_NAME}_sizes.csv"
POOLED_SIZES_PNG = f"{RUN_NAME}{PHOTO_SUFFIXES['sizes']}"
POOLED_PERCENTS = tuple(range(10, 100, 10))
D_DECIMALS = 4  # D values and their intervals in predictions.csv
LISTED_OUTPUTS = 10  # outputs in the way named in the error line
# Folder scans skip the prototype's masks (X_label.jpg) and this tool's own outputs.
DERIVED_TAGS = ("_label", "_mask", "_overlay", "_instances", "_sizes")
OVERLAY_QUALITY = 90


@dataclass(frozen=True)
class OutputSettings:
    """What a photo's outputs depend on beyond its mask (each field is the command's option of that name):
    out, the folder; threshold, stone where the probability is at least this; overlay, also write
    NAME_overlay.jpg; mm_per_pixel, millimetre columns and D values in mm; min_distance, a binary model's
    watershed seeds this share of the shorter side apart; weighting and include_edge, how stones count in a distribution;
    percents, the D values reported (--percentiles); ci, their confidence intervals' level; bootstrap, the
    resamples they come from (0: no intervals); seed, the bootstrap's seed; output, the model's kind (stoneseg.model.model_output): "binary"
    splits the mask by its geometry, "boundary" and "distance" follow the network's second map
    (stoneseg.stones.stones_of)."""
    out: Path
    threshold: float
    overlay: bool
    mm_per_pixel: float | None
    min_distance: float
    weighting: str
    include_edge: bool
    percents: tuple[float, ...] = stones.DEFAULT_PERCENTS
    ci: float = stones.DEFAULT_LEVEL
    bootstrap: int = stones.DEFAULT_RESAMPLES
    seed: int = stones.DEFAULT_SEED
    output: str = "binary"

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given) -> OutputSettings:
        """The settings from a command's arguments; `given` overrides them, and a field with a default that
        the arguments lack (a front end without --percentiles, say) takes its default."""
        values = {}
        for field in fields(cls):
            if field.name in given:
                values[field.name] = given[field.name]
            elif hasattr(args, field.name) or field.default is MISSING:
                values[field.name] = getattr(args, field.name)
        return cls(**values)

    @property
    def intervals(self) -> bool:
        """Whether D values get confidence intervals (bootstrap resamples asked for)."""
        return self.bootstrap > 0


@dataclass(frozen=True)
class Prediction:
    """One row of predictions.csv. stone_count: the stones found (split instances, edge stones included);
    edge_stones: those of them cut by the photo's edge. d_values: the photo's D values (see `distribution_of`,
    `d_values_of`) as (column, value) pairs, each column naming its percent and unit (d10_mm, d50_mm,
    d80_mm, or _px: size_unit, mm when the pixel size is known), and with intervals each D value's ends
    (d50_mm_low, d50_mm_high); None (an empty cell) when the photo has no stone in its distribution."""
    file: str
    width: int
    height: int
    stone_fraction: float
    stone_count: int
    edge_stones: int
    size_unit: str
    d_values: tuple[tuple[str, float | None], ...] = ()

    def __getitem__(self, column: str):
        """A cell of the row by its predictions.csv column (row["d50_mm"], row["stone_count"])."""
        return self.columns()[column]

    def columns(self) -> dict:
        """{column: value} as predictions.csv holds it (None for an empty cell)."""
        named = {field.name: getattr(self, field.name) for field in fields(self) if field.name != "d_values"}
        return {**named, **dict(self.d_values)}


PREDICTION_COLUMNS = tuple(field.name for field in fields(Prediction) if field.name != "d_values")


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


def photo_seed(settings: OutputSettings, name: str | Path) -> tuple[int, int]:
    """The bootstrap seed of one photo's D values: --seed and the photo's file name, so a photo's intervals are
    the same in any run, in any order, on any number of threads, and two photos' resamples differ."""
    return settings.seed, zlib.crc32(Path(str(name)).name.encode())


def d_values_of(distribution: stones.Distribution, settings: OutputSettings, seed=None,
                percents=None) -> stones.SizeValues:
    """The D values of `distribution` (stoneseg.stones.size_values) at `percents` (--percentiles when None),
    with the size curve's band (stones.curve_percents) when there are intervals: --bootstrap resamples at
    level --ci, drawn with `seed` (--seed when None). `.at(settings.percents)` picks the D values."""
    percents = settings.percents if percents is None else percents
    if settings.intervals:
        percents = stones.curve_percents(percents)
    return stones.size_values(distribution, percents, level=settings.ci, resamples=settings.bootstrap,
                              seed=settings.seed if seed is None else seed)


def size_curve(distribution: stones.Distribution, values: stones.SizeValues, title: str,
               settings: OutputSettings) -> bytes | None:
    """A size curve's PNG (stones.size_curve_png) with the D values at --percentiles marked and, when there
    are intervals, `values`' band shaded; None when no stone counts."""
    band = values if settings.intervals else None
    return stones.size_curve_png(distribution, title, settings.percents, band)


def d_columns(values: stones.SizeValues) -> tuple[tuple[str, float | None], ...]:
    """(column, value) pairs for a row of predictions.csv, rounded to D_DECIMALS."""
    return tuple((name, None if value is None else round(value, D_DECIMALS)) for name, value in values.columns().items())


# ----------------------------------------------------------------------------- masks, stones and a photo's files
def find_stones(path: str | Path, mask: np.ndarray, settings: OutputSettings,
                maps: np.ndarray | None = None) -> tuple[np.ndarray, stones.StoneTable]:
    """One photo's full-size mask split into stones (uint16 labels) and measured (--mm-per-pixel): by the
    mask's geometry for a binary model (--min-distance), else along the network's working-resolution `maps`
    (stoneseg.stones.stones_of). A mask with no background at all is an io.ImageError naming the photo."""
    try:
        if settings.output == "binary":
            labels, boxes = stones.split_stones(mask, settings.min_distance * min(mask.shape), return_boxes=True)
        else:
            labels, boxes = stones.stones_of(maps, mask, settings.output, threshold=settings.threshold), None
    except ValueError as error:
        raise io.ImageError(str(path), f"cannot split the predicted mask into stones: {error}") from None
    return labels, stones.measure_stones(labels, settings.mm_per_pixel, boxes)


def finish_photo(path: str | Path, maps: np.ndarray, original: tuple[int, int], settings: OutputSettings,
                 photo: np.ndarray | None = None) -> tuple[Prediction, stones.StoneTable]:
    """Upsample and threshold one photo's stone probability (channel 0 of its (H, W, C) `maps`), then
    `write_outputs`."""
    mask = full_size_mask(np.ascontiguousarray(maps[..., 0]), original, settings.threshold)
    return write_outputs(path, mask, settings, photo, maps)


def write_outputs(path: str | Path, mask: np.ndarray, settings: OutputSettings, photo: np.ndarray | None = None,
                  maps: np.ndarray | None = None) -> tuple[Prediction, stones.StoneTable]:
    """Split and measure one photo's full-size 0/255 mask, write its files to the output folder, return its
    row and its stone table (for the run's pooled distribution). Nothing is written for a mask that cannot
    be split.

    `photo` is the full-resolution photo when the caller has it; the overlay reads it otherwise. That is
    a second decode of the file, on purpose: the model's input must come from the reduced decode the
    records were made with, and only the overlay needs every pixel.
    """
    labels, table = find_stones(path, mask, settings, maps)
    return write_photo(path, mask, labels, table, settings, photo), table


def write_photo(path: str | Path, mask: np.ndarray, labels: np.ndarray, table: stones.StoneTable,
                settings: OutputSettings, photo: np.ndarray | None = None) -> Prediction:
    """Write one photo's mask, instances, stone table, polygons, size curve (and overlay) to the output folder;
    return its row. `path` names the photo in the row as given (a local path, or a URL a pipeline read)."""
    paths = output_paths(path, settings.out, settings.overlay)
    write_atomically(paths["mask"], io.encode_png(mask))
    write_atomically(paths["instances"], stones.encode_instances_png(labels))
    write_atomically(paths["stones"], table.csv())
    geojson.write_stones_geojson(paths["polygons"], labels, table)  # pixel coordinates: a photo has no georeference
    distribution = distribution_of(table, settings)
    values = d_values_of(distribution, settings, photo_seed(settings, path))
    curve = size_curve(distribution, values, curve_title(Path(path).name, settings), settings)
    if curve is None:
        paths["sizes"].unlink(missing_ok=True)  # an older run's curve would be a wrong answer
    else:
        write_atomically(paths["sizes"], curve)
    if settings.overlay:
        photo = io.read_photo_full(path) if photo is None else photo
        write_atomically(paths["overlay"], io.encode_jpeg(stones.draw_stones(photo, labels), OVERLAY_QUALITY))
    height, width = mask.shape
    return photo_row(path, width, height, cv2.countNonZero(mask) / mask.size, table, values, settings)


def photo_row(path: str | Path, width: int, height: int, stone_fraction: float, table: stones.StoneTable,
              values: stones.SizeValues, settings: OutputSettings) -> Prediction:
    """One photo's (or raster's) row of predictions.csv; `values` from `d_values_of`."""
    return Prediction(str(path), width, height, round(stone_fraction, 6), len(table),
                      int(table.columns["touches_edge"].sum()), values.unit,
                      d_columns(values.at(settings.percents)))


# ----------------------------------------------------------------------------- the run's files
def write_predictions_csv(path: Path, rows: list[Prediction]) -> None:
    """predictions.csv: PREDICTION_COLUMNS, then the rows' D value columns (in mm, then px, when a run has
    both: a photo's cells in the other unit are empty)."""
    d_names = {}
    for unit in stones.UNITS:
        for row in rows:
            if row.size_unit == unit:
                d_names.update(dict.fromkeys(name for name, _ in row.d_values))
    names = list(PREDICTION_COLUMNS) + list(d_names)
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        cells = row.columns()
        writer.writerow(["" if cells.get(name) is None else cells[name] for name in names])
    write_atomically(path, text.getvalue().encode())


@dataclass(frozen=True)
class Pooled:
    """The run's pooled distribution (in mm when every photo has a pixel size, else px) and its D values
    (`d_values_of`, with the band when there are intervals)."""
    distribution: stones.Distribution
    values: stones.SizeValues

    def __len__(self) -> int:
        return len(self.distribution)


def pooled_percents(settings: OutputSettings) -> tuple[float, ...]:
    """The rows of POOLED_SIZES_CSV: 10, 20, ... 90 and the percents asked for."""
    return tuple(sorted({float(percent) for percent in POOLED_PERCENTS} | set(settings.percents)))


def write_pooled_sizes(out: Path, tables: list[stones.StoneTable], settings: OutputSettings) -> Pooled:
    """Write the run's pooled distribution of `tables` (one per photo): POOLED_SIZES_CSV (percent passing, the
    size in px and its interval's ends, and in mm with --mm-per-pixel; no row when no stone counts; every
    interval from the same resamples of the pooled stones) and POOLED_SIZES_PNG (its curve and band; removed
    when there is none). Returns the pooled distribution and its D values."""
    in_pixels = distribution_of(tables, settings, unit="px")
    in_mm = distribution_of(tables, settings, unit="mm") if settings.mm_per_pixel is not None else None
    percents = pooled_percents(settings)
    columns = [("diameter_px", in_pixels)] + ([("diameter_mm", in_mm)] if in_mm else [])
    values = {name: d_values_of(distribution, settings, percents=percents) for name, distribution in columns}
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    ends = ("_low", "_high") if settings.intervals else ()
    writer.writerow(["percent_passing"] + [name + end for name, _ in columns for end in ("", *ends)])
    if len(in_pixels):
        for percent in percents:
            cells = []
            for name, _ in columns:
                at = values[name].at([percent])
                cells += [at.sizes[0]] + ([at.low[0], at.high[0]] if settings.intervals else [])
            writer.writerow([f"{percent:g}", *(f"{size:.6g}" for size in cells)])
    write_atomically(out / POOLED_SIZES_CSV, text.getvalue().encode())
    name, distribution = columns[-1]  # mm when known
    pooled = Pooled(distribution, values[name])
    curve = size_curve(distribution, pooled.values, curve_title(f"all {len(tables)} photo(s)", settings), settings)
    if curve is None:
        (out / POOLED_SIZES_PNG).unlink(missing_ok=True)  # an older run's curve would be a wrong answer
    else:
        write_atomically(out / POOLED_SIZES_PNG, curve)
    return pooled


def write_run(out: Path, rows: list[Prediction], tables: list[stones.StoneTable],
              settings: OutputSettings) -> Pooled:
    """Write the run's files, predictions.csv and the pooled distribution, from the photos done (in input
    order); returns the pooled distribution and its D values."""
    write_predictions_csv(out / PREDICTIONS_CSV, rows)
    return write_pooled_sizes(out, tables, settings)


def run_summary(rows: list[Prediction], pooled: Pooled, settings: OutputSettings | None = None) -> str:
    """The closing line about the stones: how many were found, and the pooled D values (at --percentiles,
    with their intervals)."""
    found = sum(row.stone_count for row in rows)
    distribution, values = pooled.distribution, pooled.values
    if not len(distribution):
        return f"{found} stone(s); none in the size distribution"
    percents = stones.DEFAULT_PERCENTS if settings is None else settings.percents
    picked = values.at(percents)
    parts = []
    for index, percent in enumerate(picked.percents):
        part = f"D{percent:g} {picked.sizes[index]:.4g}"
        if picked.low is not None:
            part += f" ({picked.low[index]:.4g}-{picked.high[index]:.4g})"
        parts.append(part)
    interval = (f"; {picked.level:.0%} bootstrap intervals from {picked.resamples} resamples of the stones"
                if picked.low is not None else "")
    return (f"{found} stone(s); pooled over the run ({len(distribution)} in the distribution, by {distribution.by}"
            f"{interval}): {', '.join(parts)} {distribution.unit}")
