"""Which split settings separate merged stones best, and what splitting and measuring cost per photo.

    python -m bench.split_stones [--data ../shared/data/stones20] [--sample data/sample] [--repeats 3]

(1) Quality, on stones20's 17 photos outside the test split of docs/stones20.md (Image06, Image09, Image12 are
    never read). The true stones are each mask's 8-connected regions. Each mask is merged the way a
    model that is perfect at its own resolution would merge it, then split with
    stoneseg.stones.split_stones at several settings, and scored against the true stones
    (stoneseg.stones.instance_scores, pooled over the 17 photos; matches at IoU >= 0.5):
      model256  the mask squashed to 256 x 256 (area) and back up (bilinear), thresholded at 0.5: what the
                default 256 x 256 records let a model see;
      quarter   the same at a quarter of the photo's size, aspect kept: scale-preserving records;
      close5    a 5 x 5 elliptic closing: only the thin gaps closed, shapes kept.
    With --model, a fourth "merge": the full-size masks that stoneseg.predict makes with that trained model
    (--photos limits the photos, e.g. to the records' val split, which the model was not trained on).
    "regions" is the baseline: connected regions of the merged mask (predict's count before issue 9), without
    splitting. Then: the plain watershed at seed distances given as a share of the photo's shorter side
    and in absolute pixels; with wide necks merged back, at several seed distances and neck ratios; and
    the defaults at several working sizes.
(2) Speed, on 3456 x 4806 photos from tools.make_sample (--sample, written if missing): medians of
    seconds per photo for what predict's finishing step did before the split (the mask: bilinear upsample of a
    256 x 256 map, threshold, 8-bit PNG encode; the stone count: connected regions; not the file
    write) beside split, measure, 16-bit PNG encode, distribution + curve, and overlay.
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from stoneseg import cli, io, stones

REPO = Path(__file__).resolve().parents[1]
STONES20 = REPO.parent / "shared" / "data" / "stones20"
# The split of stones20 in docs/stones20.md (build_records, seed 42): these three photos are the test split.
TEST_PHOTOS = ("Image06", "Image09", "Image12")
FRACTIONS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.04)
PIXELS = (5, 8, 12, 16, 24)
NECK_FRACTIONS = (0.005, 0.01, 0.02, 0.03)
NECK_RATIOS = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
WORK_SIZES = (None, 2_000_000, 1_000_000, 500_000, 250_000)  # None: the photo's own size
MASK = "mask: upsample, threshold, PNG encode"
COUNT = "region count (before the split): regions + bincount"
SPLIT = "split_stones (labels and boxes)"
MEASURE = "measure_stones with the split's boxes"


def cpu_summary() -> str:
    """CPU model, the flags that matter for TensorFlow here, cores available, load average."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"]
    shown = " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in wanted)
    return (f"CPU: {model}; {shown}; {cli.cores()} cores; "
            f"load average {os.getloadavg()[0]:.1f}")


# ----------------------------------------------------------------------------- merging like a model
def squashed(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The {0, 1} mask a perfect model at `size` (height, width) gives back at the mask's own size."""
    height, width = mask.shape
    small = cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return stones.stone_mask(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))


MERGES = {
    "model256": lambda mask: squashed(mask, (256, 256)),
    "quarter": lambda mask: squashed(mask, tuple(-(-n // 4) for n in mask.shape)),
    "close5": lambda mask: cv2.morphologyEx(mask, cv2.MORPH_CLOSE,
                                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))),
}


def regions(mask: np.ndarray) -> np.ndarray:
    """The baseline: 8-connected regions of at least MIN_STONE_FRACTION of the photo, unsplit."""
    labels = stones.true_stones(mask)
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    return np.where(areas[labels] >= stones.MIN_STONE_FRACTION * mask.size, labels, 0)


# ----------------------------------------------------------------------------- (1) quality
def load_truth(data: Path, names: list[str] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, mask, true labels) of every photo outside the test split (of those in `names`, if given)."""
    found = []
    for path in sorted(data.glob("Image*_label.jpg")):
        name = path.name.removesuffix("_label.jpg")
        if name in TEST_PHOTOS or (names and name not in names):
            continue
        mask, _ = io.read_mask(path, io.Scale(1))
        found.append((name, mask, stones.true_stones(mask)))
    return found


def score(truth, predicted_labels: list[np.ndarray]) -> dict:
    comparisons = [stones.compare_instances(labels, predicted) for (_, _, labels), predicted
                   in zip(truth, predicted_labels)]
    pooled = stones.instance_scores(comparisons)
    per_photo = [stones.instance_scores(c) for c in comparisons]
    by_count = [stones.instance_scores(c, by="count") for c in comparisons]

    def median_abs(rows, key):
        values = [abs(row[key]) for row in rows if row[key] is not None]
        return statistics.median(values) if values else float("nan")

    return {
        "f1": pooled["f1"],
        "mean_f1": statistics.fmean(row["f1"] for row in per_photo),
        "count_error": (pooled["predicted_count"] - pooled["true_count"]) / pooled["true_count"],
        "mean_abs_count_error": statistics.fmean(abs(row["predicted_count"] - row["true_count"]) / row["true_count"]
                                                 for row in per_photo),
        "d50_area": median_abs(per_photo, "d50_relative_error"),
        "d80_area": median_abs(per_photo, "d80_relative_error"),
        "d50_count": median_abs(by_count, "d50_relative_error"),
    }


HEADER = (f"{'merge':9} {'split':30} {'F1':>6} {'meanF1':>7} {'count':>7} {'|count|':>8} "
          f"{'|D50|a':>7} {'|D80|a':>7} {'|D50|c':>7} {'s/photo':>8}")


def row(merge: str, setting: str, result: dict, seconds: float) -> str:
    return (f"{merge:9} {setting:30} {result['f1']:6.3f} {result['mean_f1']:7.3f} {result['count_error']:+7.1%} "
            f"{result['mean_abs_count_error']:8.1%} {result['d50_area']:7.1%} {result['d80_area']:7.1%} "
            f"{result['d50_count']:7.1%} {seconds:8.3f}")


def settings() -> list[tuple[str, dict]]:
    """(name, split_stones keywords) to try; a float min_distance is a share of the shorter side."""
    default_distance, default_ratio = stones.MIN_DISTANCE_FRACTION, stones.NECK_RATIO
    tried = [(f"watershed {distance:g} x side", {"min_distance": distance, "neck_ratio": None})
             for distance in FRACTIONS]
    tried += [(f"watershed {pixels} px", {"min_distance": pixels, "neck_ratio": None}) for pixels in PIXELS]
    tried += [(f"necks {default_ratio:g}, {distance:g} x side", {"min_distance": distance})
              for distance in NECK_FRACTIONS]
    tried += [(f"necks {ratio:g}, {default_distance:g} x side", {"neck_ratio": ratio}) for ratio in NECK_RATIOS]
    tried += [(f"defaults, {'own size' if pixels is None else f'work {pixels / 1e6:g} Mpx'}", {"work_pixels": pixels})
              for pixels in WORK_SIZES]
    return tried


def split_all(merged: list[np.ndarray], keywords: dict) -> tuple[list[np.ndarray], float]:
    """Every merged mask split with `keywords` (defaults for the rest); seconds per photo."""
    labels, started = [], time.perf_counter()
    for mask in merged:
        given = dict(keywords)
        distance = given.pop("min_distance", stones.MIN_DISTANCE_FRACTION)
        given["min_distance"] = distance * min(mask.shape) if isinstance(distance, float) else distance
        if "work_pixels" in given and given["work_pixels"] is None:
            given["work_pixels"] = mask.size
        labels.append(stones.split_stones(mask, **given))
    return labels, (time.perf_counter() - started) / len(merged)


def model_masks(model: Path, data: Path, names: list[str]) -> list[np.ndarray]:
    """The full-size masks stoneseg.predict makes of the photos `names` with `model` (threshold 0.5)."""
    cli.import_tensorflow()
    from stoneseg.inference import Inference, full_size_mask, load_model

    inference = Inference(load_model(model))
    masks = []
    for name in names:
        image, original = io.read_photo(data / f"{name}.JPG", inference.size)
        masks.append(stones.stone_mask(full_size_mask(inference.probability(image), original, 0.5)))
    return masks


def quality(data: Path, merges: list[str], model: Path | None = None, names: list[str] | None = None) -> None:
    truth = load_truth(data, names)
    predicted = {} if model is None else {"model": model_masks(model, data, [name for name, _, _ in truth])}
    if model is not None:
        merges = merges + ["model"]
        print(f"model: {model} on {', '.join(name for name, _, _ in truth)}")
    count = sum(int(labels.max()) for _, _, labels in truth)
    print(f"\n(1) quality: {len(truth)} stones20 photos outside the test split, {count:,} true stones; pooled F1 "
          "at IoU >= 0.5; count error, pooled and mean |per photo|; median over photos of |relative error| of D50 "
          "and D80 by area (a) and of D50 by count (c); seconds per photo for the split. \"watershed\": seeds "
          f"min_distance apart, no merging; \"necks R\": merging necks at least R times the narrower piece; "
          f"defaults: min_distance {stones.MIN_DISTANCE_FRACTION:g} x the shorter side, neck ratio "
          f"{stones.NECK_RATIO:g}, work size {stones.WORK_PIXELS:,} pixels", flush=True)
    print(HEADER)
    for merge in merges:
        merged = predicted.get(merge) or [MERGES[merge](mask) for _, mask, _ in truth]
        print(row(merge, "regions (no split)", score(truth, [regions(mask) for mask in merged]), 0.0), flush=True)
        for name, keywords in settings():
            labels, seconds = split_all(merged, keywords)
            print(row(merge, name, score(truth, labels), seconds), flush=True)


# ----------------------------------------------------------------------------- (2) speed
def speed(sample: Path, repeats: int, full_size: bool) -> None:
    if not sample.exists():
        from tools.make_sample import write_sample
        print(f"writing 4 sample photos of 3456x4806 to {sample}")
        write_sample(sample, count=4)
    photos = sorted(sample.glob("Image*.JPG"))
    times: dict[str, list[float]] = {}
    counts = []

    def timed(name, run):
        started = time.perf_counter()
        result = run()
        times.setdefault(name, []).append(time.perf_counter() - started)
        return result

    for path in photos:
        truth, size = io.read_mask(path.with_name(path.stem + "_label.jpg"), io.Scale(1))
        photo = io.read_photo_full(path)
        probability = cv2.resize(truth.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA)
        for _ in range(repeats):
            def mask_stage():  # what stays of stoneseg.outputs.finish_photo (less the file write)
                full = cv2.resize(probability, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                mask = cv2.compare(full, 0.5, cv2.CMP_GE)
                io.encode_png(mask)
                return mask

            def count_before():  # what the split replaced: predict's old region count (stone_statistics)
                count, regions = cv2.connectedComponents(mask, connectivity=8)
                return np.bincount(regions.ravel(), minlength=count)
            mask = timed(MASK, mask_stage)
            timed(COUNT, count_before)
            labels, boxes = timed(SPLIT, lambda: stones.split_stones(mask, return_boxes=True))
            table = timed(MEASURE, lambda: stones.measure_stones(labels, boxes=boxes))
            timed("measure_stones finding its own boxes", lambda: stones.measure_stones(labels))
            timed("encode_instances_png (16-bit)", lambda: stones.encode_instances_png(labels))
            timed("size_distribution + size_curve_png",
                  lambda: stones.size_curve_png(stones.size_distribution(table), path.stem))
            timed("draw_stones (overlay)", lambda: stones.draw_stones(photo, labels))
        counts.append(len(table))
        if full_size and path == photos[0]:
            timed("split_stones at full size (work = photo)",
                  lambda: stones.split_stones(mask, work_pixels=mask.size))
    print(f"\n(2) speed: {len(photos)} photos of {size[1]}x{size[0]} from {sample} ({', '.join(map(str, counts))} "
          f"stones after splitting), each {repeats} times; the mask from a 256 x 256 map of the true mask; "
          f"working factor {stones.work_factor(size)} (WORK_PIXELS {stones.WORK_PIXELS:,})")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:48} {value:7.3f} s")
    both = medians[SPLIT] + medians[MEASURE]
    print(f"  split + measure {both:.3f} s = {both / medians[MASK]:.2f} x the mask step, "
          f"{both / (medians[MASK] + medians[COUNT]):.2f} x mask + count (predict's finishing before the split, less the write)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=STONES20, help="stones20 (only its non-test photos are read)")
    parser.add_argument("--sample", type=Path, default=REPO / "data" / "sample", help="3456x4806 sample photos")
    parser.add_argument("--repeats", type=int, default=3, help="speed: runs per photo")
    parser.add_argument("--merges", nargs="*", choices=sorted(MERGES), default=list(MERGES))
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--full-size", action="store_true", help="speed: also split one photo at its full size")
    parser.add_argument("--model", type=Path, default=None, help="quality: also split this trained model's masks")
    parser.add_argument("--photos", nargs="+", default=None, metavar="NAME",
                        help="quality: only these photos (e.g. Image01 Image02 Image16 Image18, the val split)")
    args = parser.parse_args()
    print(cpu_summary())
    if not args.skip_speed:
        speed(args.sample, args.repeats, args.full_size)
    if not args.skip_quality:
        quality(args.data, args.merges, args.model, args.photos)


if __name__ == "__main__":
    main()
