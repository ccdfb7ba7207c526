"""What the grain-size statistics and the polygon file cost at survey scale, and how many resamples they need.

    python -m bench.size_statistics [--stones 20000] [--repeats 3]

(1) Seconds for the D values and their bootstrap intervals of a distribution of --stones stones (log-normal
    diameters, by area): the D values alone (np.interp), the 95 % intervals of D16/D50/D84/D96 from 1,000
    resamples, and the same with the size curve's band (every whole percent as well, what predict computes).
(2) How many resamples: over 20 seeds, the spread (standard deviation) of the interval's ends of D50 as a
    share of the interval's width, at 200, 1,000 and 5,000 resamples, for 300 stones (a photo) and for
    --stones; 1 / sqrt(resamples) is the expected trend.
(3) Seconds for the polygons of --stones stones (discs and ellipses of 8 to 30 px on a grid) as GeoJSON:
    tracing (stoneseg.geojson.stone_polygons), the features with their properties, and the written file.
(4) What a photo of --photo-stones stones adds to predict's writing: its D values with the curve's band
    (stoneseg.outputs.d_values_of, 1,000 resamples) and its NAME_stones.geojson.
Medians of --repeats runs; the machine line first.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.machine import describe
from stoneseg import geojson, outputs, stones

PERCENTS = (16, 50, 84, 96)


def table_of(diameters: np.ndarray) -> stones.StoneTable:
    return stones.StoneTable({"id": np.arange(1, len(diameters) + 1), "diameter_px": diameters,
                              "area_px": np.pi * diameters**2 / 4, "touches_edge": np.zeros(len(diameters), np.int64)})


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def stone_labels(count: int, seed: int = 0) -> np.ndarray:
    """int32 labels of `count` separate stones (ellipses of 8 to 30 px, random axes and angles) on a grid."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(count)))
    cell = 34
    labels = np.zeros((side * cell, side * cell), np.int32)
    for index in range(count):
        row, column = divmod(index, side)
        axes = tuple(int(value) for value in rng.integers(4, 16, 2))
        centre = (column * cell + cell // 2, row * cell + cell // 2)
        cv2.ellipse(labels, centre, axes, float(rng.uniform(0, 180)), 0, 360, index + 1, -1)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stones", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photo-stones", type=int, default=500)
    args = parser.parse_args()
    print(describe(), flush=True)

    rng = np.random.default_rng(0)
    distribution = stones.size_distribution(table_of(rng.lognormal(np.log(30), 0.5, args.stones)))
    band = stones.curve_percents(PERCENTS)
    print(f"\n(1) {args.stones:,} stones, by area, median of {args.repeats}:")
    for label, work in (
            ("D values only", lambda: stones.size_values(distribution, PERCENTS, resamples=0)),
            ("D16/50/84/96, 1,000 resamples", lambda: stones.size_values(distribution, PERCENTS)),
            (f"+ curve band ({len(band)} percents)", lambda: stones.size_values(distribution, band))):
        print(f"  {label:36s} {median_seconds(work, args.repeats):8.3f} s", flush=True)

    print("\n(2) spread of D50's 95 % interval ends over 20 seeds, as a share of the interval's width:")
    for count in (300, args.stones):
        sample = stones.size_distribution(table_of(rng.lognormal(np.log(30), 0.5, count)))
        for resamples in (200, 1000, 5000):
            ends = np.array([[values.low[0], values.high[0]] for values in
                             (stones.size_values(sample, [50], resamples=resamples, seed=seed) for seed in range(20))])
            width = float(np.mean(ends[:, 1] - ends[:, 0]))
            spread = ends.std(axis=0, ddof=1) / width
            print(f"  {count:6,} stones, {resamples:5,} resamples: low end {spread[0]:6.1%}, high end "
                  f"{spread[1]:6.1%} of the width ({width:.3g} px)", flush=True)

    labels = stone_labels(args.stones)
    table = stones.measure_stones(labels)
    print(f"\n(3) polygons of {len(table):,} stones on a {labels.shape[1]} x {labels.shape[0]} image, median of "
          f"{args.repeats}:")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stones.geojson"
        transform = (500_000.0, 0.002, 0.0, 5_000_000.0, 0.0, -0.002)
        for label, work in (
                ("trace (stone_polygons)", lambda: sum(1 for _ in geojson.stone_polygons(labels))),
                ("features (+ properties, map coords)", lambda: sum(1 for _ in geojson.stone_features(
                    labels, table, transform))),
                ("write_stones_geojson", lambda: geojson.write_stones_geojson(path, labels, table, transform,
                                                                               "EPSG:32632"))):
            print(f"  {label:36s} {median_seconds(work, args.repeats):8.3f} s", flush=True)
        print(f"  file: {path.stat().st_size / 1e6:.1f} MB, {path.stat().st_size / len(table):.0f} bytes per stone")

        labels = stone_labels(args.photo_stones, seed=1)
        table = stones.measure_stones(labels)
        settings = outputs.OutputSettings(Path(folder), 0.5, False, None, 0.01, "area", False)
        distribution = outputs.distribution_of(table, settings)
        print(f"\n(4) a photo of {len(table):,} stones as predict writes it, median of {args.repeats}:")
        for label, work in (
                ("D values + band (d_values_of)", lambda: outputs.d_values_of(distribution, settings)),
                ("NAME_stones.geojson", lambda: geojson.write_stones_geojson(path, labels, table))):
            print(f"  {label:36s} {median_seconds(work, args.repeats):8.3f} s", flush=True)


if __name__ == "__main__":
    main()
