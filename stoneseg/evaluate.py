"""Score a model on held-out photos: `python -m stoneseg.evaluate MODEL.keras (--records DIR --split S | --data DIR)`.

Per photo: IoU, Dice, precision and recall of the stone class at the threshold; over all photos: their
mean, and the pooled scores of all pixels together. The model is fed as stoneseg.predict feeds it
(stoneseg.inference): squashed to its input size, or resized by its scale (or --scale) and run whole
or tiled. With --records the masks are the records' own, at the records' size: squash records for a
squash model, scale-F records for a model at scale F, each scored whole at its stored size. With --data
the photos are read by stoneseg.io exactly as prediction reads them and scored twice: at the model's
working size against the mask resized as the record builder resizes it, and at the photo's original
size against the original mask (thresholded at io.MASK_THRESHOLD), with the probabilities upsampled
as `stoneseg.predict` upsamples them.

With --data, stones are scored too, at the original size (stoneseg.stones): the predicted mask split
into stones as predict splits it (or, with --instances regions, its plain 8-connected regions) against
the true mask's 8-connected regions (the true masks separate touching stones by thin gaps), matched
one-to-one at IoU >= 0.5: counts, precision, recall, F1 and the relative errors of D50 and D80, per photo
and pooled. Records hold resized masks, whose gaps a resize can close, so --records scores pixels only.

The report folder holds metrics.json, per_image.csv and worst.png, a contact sheet of the photos with
the lowest IoU. Scores with a zero denominator are 1.0 (see `scores`).
"""

import argparse
import csv
import heapq
import io as bytes_io
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from stoneseg import cli, io, precision, stones
from stoneseg.choices import PRECISIONS
from stoneseg.cli import InputError
from stoneseg.files import recover, staged_folder
from stoneseg.inference import Inference, check_model_file, decode_ahead, full_size_mask, load_model
from stoneseg.pairs import find_pairs
from stoneseg.records import check_shards, corrupted, load_manifest

PROG = "evaluate"

SCORES = ("iou", "dice", "precision", "recall")
MODEL, ORIGINAL = "model", "original"  # the two resolutions scored
CONVENTIONS = ("A score whose denominator is 0 is 1.0 (nothing to find and nothing found, or no false "
               "alarm possible): a photo with no stones and none predicted scores 1 everywhere; no stones "
               "but some predicted: IoU, Dice and precision 0, recall 1; stones but none predicted: IoU, "
               "Dice and recall 0, precision 1. Pooled scores use the summed pixel counts of all photos.")
SHEET = "worst.png"
SHEET_ROW_HEIGHT = 200
SHEET_TEXT_HEIGHT = 30  # the title, the legend and each photo's label are strips of text this high
SHEET_TEXT_WIDTH = 900  # the title and the legend are this wide (the sheet is at least as wide)
INSTANCE_KEYS = ("true_count", "true_left_out", "predicted_count", "precision", "recall", "f1",
                 "d50_relative_error", "d80_relative_error")
INSTANCE_MODES = {"split": "split into stones as predict splits them",
                  "regions": "the predicted mask's 8-connected regions, unsplit"}


# ----------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Counts:
    """Pixel counts of the stone class: true/false positives, false/true negatives."""
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def confusion_counts(truth: np.ndarray, predicted: np.ndarray) -> Counts:
    """Counts of two same-shaped masks; nonzero = stone."""
    truth, predicted = np.asarray(truth) != 0, np.asarray(predicted) != 0
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and prediction {predicted.shape} differ in shape")
    tp = int(np.count_nonzero(truth & predicted))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return Counts(tp, fp, fn, truth.size - tp - fp - fn)


def scores(counts: Counts) -> dict[str, float]:
    """IoU, Dice, precision and recall of the stone class; a score whose denominator is 0 is 1.0."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    return {"iou": _ratio(tp, tp + fp + fn), "dice": _ratio(2 * tp, 2 * tp + fp + fn),
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn)}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0


@dataclass
class PhotoScore:
    """One photo's counts at each resolution it was scored at, and its stones at the original size when
    scored from a folder."""
    name: str
    height: int  # original, EXIF-oriented
    width: int
    counts: dict[str, Counts]
    instances: stones.InstanceComparison | None = None

    def ranking_iou(self) -> float:
        """IoU at the original size when it was scored there, else at the model's resolution."""
        return scores(self.counts.get(ORIGINAL, self.counts[MODEL]))["iou"]


def summary(photos: list[PhotoScore], resolution: str) -> dict:
    """Mean over photos and pooled scores at one resolution, with the summed counts."""
    per_photo = [scores(photo.counts[resolution]) for photo in photos]
    total = sum((photo.counts[resolution] for photo in photos), Counts())
    return {"mean": {name: float(np.mean([s[name] for s in per_photo])) for name in SCORES},
            "pooled": scores(total), "counts": vars(total)}


# ----------------------------------------------------------------------------- the worst photos
class WorstPhotos:
    """The `count` photos with the lowest IoU seen so far, with what the contact sheet shows of them."""

    def __init__(self, count: int):
        self.count, self._heap, self._seen = count, [], 0

    def offer(self, score: PhotoScore, image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> None:
        """Keep this photo (model-resolution image, truth and prediction) if it is among the worst, shrunk to
        twice the sheet's row height: a photo at a scale near 1 would otherwise hold megapixels per entry."""
        if not self.count:
            return
        if image.shape[0] > 2 * SHEET_ROW_HEIGHT:
            size = (max(1, round(image.shape[1] * 2 * SHEET_ROW_HEIGHT / image.shape[0])), 2 * SHEET_ROW_HEIGHT)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            truth, predicted = (cv2.resize(np.uint8(mask != 0), size, interpolation=cv2.INTER_NEAREST)
                                for mask in (truth, predicted))
        self._seen += 1
        # heapq keeps the smallest first: storing -IoU, the best of those kept is popped when over count.
        heapq.heappush(self._heap, (-score.ranking_iou(), -self._seen, score, image, truth, predicted))
        if len(self._heap) > self.count:
            heapq.heappop(self._heap)

    def sorted(self) -> list[tuple]:
        """(score, image, truth, predicted), worst first."""
        return [entry[2:] for entry in sorted(self._heap, reverse=True)]


def contact_sheet(worst: list[tuple], title: str) -> np.ndarray:
    """RGB rows of photo | truth | prediction, each labelled with its name and IoU, worst first.

    Panels are shown at the photo's own aspect ratio. In the prediction, white is stone found, red a
    false stone and blue a missed stone.
    """
    rows = [_sheet_text(title, SHEET_TEXT_WIDTH),
            _sheet_text("photo | true mask | prediction: white = stone found, red = false stone, blue = missed stone",
                        SHEET_TEXT_WIDTH)]
    for score, image, truth, predicted in worst:
        height = SHEET_ROW_HEIGHT
        width = int(np.clip(round(height * score.width / score.height), height // 2, 3 * height))
        truth, predicted = truth != 0, predicted != 0
        colours = np.zeros((*truth.shape, 3), np.uint8)
        colours[truth & predicted] = (255, 255, 255)
        colours[~truth & predicted] = (230, 40, 40)
        colours[truth & ~predicted] = (60, 120, 255)
        panels = [cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA),
                  cv2.resize(np.repeat(truth[..., None] * np.uint8(255), 3, axis=2), (width, height),
                             interpolation=cv2.INTER_NEAREST),
                  cv2.resize(colours, (width, height), interpolation=cv2.INTER_NEAREST)]
        gap = np.full((height, 6, 3), 255, np.uint8)
        strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
        label = f"{score.name}   IoU {score.ranking_iou():.3f}"
        rows += [_sheet_text(label, strip.shape[1]), strip]
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(rows, axis=0)


def _sheet_text(text: str, width: int) -> np.ndarray:
    strip = np.full((SHEET_TEXT_HEIGHT, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


# ----------------------------------------------------------------------------- the two sources
def check_records_fit(inference: Inference, manifest: dict, records: Path, model: Path) -> None:
    """Raise InputError unless the records were made the way the model takes photos: squash records of
    the model's input size for a squash model, scale records of the same F for a model at scale F."""
    scale = manifest.get("scale") if manifest.get("mode", "squash") == "scale" else None
    if scale is None:
        made = "photos squashed to {}x{}".format(*manifest["image_size"])
        fits = inference.scale is None and tuple(manifest["image_size"]) == inference.size
    else:
        made = f"photos resized by {scale:g}"
        fits = inference.scale is not None and math.isclose(scale, inference.scale)
    if not fits:
        advice = "pass --scale {:g} to run it at that scale, or score it with --data".format(scale) if scale else \
            "score it with --data, or on records built for it"
        raise InputError(f"{records} holds {made} but {model} takes {inference.describe()}; {advice}")


def score_records(inference: Inference, records: Path, split: str, threshold: float, worst: WorstPhotos,
                  progress) -> list[PhotoScore]:
    """Score one split of the records at their stored size (check_records_fit first). Squash records run
    in batches; scale records, whose sizes differ, one at a time, whole or tiled, with no padding scored."""
    from stoneseg.data import read_examples

    photos = []
    batches = read_examples(records, split).batch(inference.batch_size if inference.batched else 1)
    for batch in batches.prefetch(2).as_numpy_iterator():
        images = batch["image"]
        probabilities = inference.probabilities(images) if inference.batched else [inference.probability(images[0])]
        for index, probability in enumerate(probabilities):
            predicted = probability >= threshold
            truth = batch["mask"][index, ..., 0]
            score = PhotoScore(batch["name"][index].decode(), int(batch["height"][index]), int(batch["width"][index]),
                               {MODEL: confusion_counts(truth, predicted)})
            worst.offer(score, batch["image"][index], truth, predicted)
            photos.append(score)
            progress.add(1)
    return photos


def predicted_stones(maps: np.ndarray, mask: np.ndarray, output: str, mode: str, min_distance: float) -> np.ndarray:
    """Instance labels of a photo from the network's working-size `maps` and the full-size predicted mask:
    split as predict splits them (stoneseg.stones.stones_of: a binary network's mask by its geometry, seeds
    `min_distance` x the shorter side apart; a boundary or distance network's by its second map), or the
    mask's plain regions (`mode` "regions"). A binary mask that is stone everywhere cannot be split (no
    background) and is scored as its one region."""
    if mode == "split":
        try:
            return stones.stones_of(maps, mask, output, min_distance)
        except ValueError:
            pass
    return stones.stone_regions(mask)


def score_folder(inference: Inference, data: Path, pairs: list, threshold: float, workers: int,
                 worst: WorstPhotos, progress, find_stones=None) -> tuple[list[PhotoScore], list[str]]:
    """Score photo/mask pairs of a folder at the model's working size and at each photo's original size,
    pixels and, with `find_stones` ((working maps, full-size mask) -> instance labels), stones; also return
    one error line per pair that could not be read. True stones smaller than the network split keeps
    (stoneseg.stones.min_stone_area, at the photo's size) are left out of the stone scores and counted."""
    photos, problems, batch = [], [], []

    def fail(error):
        problems.append(str(error))
        if cli.interactive():
            print(flush=True)  # a line of its own, not the end of the progress bar's
        cli.error_line(PROG, error)
        progress.add(1)

    def score(pair, decoded, maps):
        image, truth, original, full_truth, true_labels = decoded
        probability = maps[..., 0]
        predicted = probability >= threshold
        full_predicted = full_size_mask(probability, original, threshold)
        counts = {MODEL: confusion_counts(truth, predicted), ORIGINAL: confusion_counts(full_truth, full_predicted)}
        smallest = stones.min_stone_area(probability.shape, original)
        instances = None if find_stones is None else \
            stones.compare_instances(true_labels, find_stones(maps, full_predicted), min_true_area=smallest)
        photo_score = PhotoScore(pair.photo, *original, counts, instances)
        worst.offer(photo_score, image, truth, predicted)
        photos.append(photo_score)
        progress.add(1)

    def score_batch():
        all_maps = inference.batch_maps(np.stack([image for _, (image, *_) in batch]))
        for (pair, decoded), maps in zip(batch, all_maps):
            score(pair, decoded, maps)
        batch.clear()

    depth = 2 * inference.batch_size if inference.batched else 1
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        decode = partial(_decode_pair, data, size=inference.size)
        for pair, decoded in decode_ahead(pool, decode, pairs, depth=depth):
            if isinstance(decoded, io.ImageError):
                fail(decoded)
            elif not inference.batched:
                score(pair, decoded, inference.maps(decoded[0]))
            else:
                batch.append((pair, decoded))
                if len(batch) == inference.batch_size:
                    score_batch()
        if batch:
            score_batch()
    return photos, problems


def _decode_pair(data: Path, pair, size: io.Size):
    """(photo, mask, original size) at the model's working size, as the record builder makes them, the
    mask at its original size and the true stones there (io.decode_stones). The mask file is read once but
    decoded more than once, on purpose: the working-size truth must come from the records' reduced decode."""
    image, original = io.read_photo(data / pair.photo, size)
    mask_file = io.read_bytes(data / pair.mask)
    truth, mask_size = io.decode_mask(mask_file, size, str(data / pair.mask))
    io.check_same_size(pair.photo, original, pair.mask, mask_size)
    full_truth, _ = io.decode_mask(mask_file, original, str(data / pair.mask))
    true_labels, _ = io.decode_stones(mask_file, str(data / pair.mask))
    return image, truth, original, full_truth, true_labels


# ----------------------------------------------------------------------------- the report
def per_image_csv(photos: list[PhotoScore], resolutions: list[str]) -> bytes:
    """One row per photo: pixel scores and counts per resolution, then (when stones were scored) the
    INSTANCE_KEYS as instances_<key> (a D error is empty when either side has no stone)."""
    text = bytes_io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    columns = [*SCORES, *vars(Counts())]
    with_instances = bool(photos) and photos[0].instances is not None
    writer.writerow(["file", "width", "height"] + [f"{res}_{column}" for res in resolutions for column in columns]
                    + ([f"instances_{key}" for key in INSTANCE_KEYS] if with_instances else []))
    for photo in photos:
        row = [photo.name, photo.width, photo.height]
        for res in resolutions:
            row += [round(value, 6) for value in scores(photo.counts[res]).values()]
            row += list(vars(photo.counts[res]).values())
        if with_instances:
            instance = stones.instance_scores(photo.instances)
            row += ["" if instance[key] is None else round(instance[key], 6) for key in INSTANCE_KEYS]
        writer.writerow(row)
    return text.getvalue().encode()


def instance_summary(photos: list[PhotoScore], mode: str, min_distance: float, output: str, working: str) -> dict:
    """metrics.json's "instances": the INSTANCE_KEYS pooled over all photos (summed counts and matches, one
    distribution of all their stones), the count's relative error, and how they were found."""
    pooled = stones.instance_scores([photo.instances for photo in photos])
    true_count, predicted_count = pooled["true_count"], pooled["predicted_count"]
    if mode == "regions":
        how = INSTANCE_MODES[mode]
    elif output == "binary":
        how = f"the predicted mask {INSTANCE_MODES[mode]} (seeds {min_distance:g} x the shorter side apart)"
    else:
        how = f"{INSTANCE_MODES[mode]}: seeds and boundaries from the network's {output} output"
    return {**pooled,
            "count_relative_error": (predicted_count - true_count) / true_count if true_count else None,
            "size": "each photo's original size", "predicted": how, "output": output,
            "true": "the true mask's 8-connected regions (or its instance labels)",
            "left_out": f"true stones smaller than {stones.MIN_STONE_PIXELS} pixels of the working image ({working}), "
                        "the smallest the network split keeps, are neither found nor missed (true_left_out)",
            "matching": f"one-to-one at IoU >= {stones.MATCH_IOU}",
            "d_values": f"equivalent-circle diameters by {stones.DEFAULT_WEIGHTING}, stones touching the photo's "
                        "edge left out; relative error = (predicted - true) / true"}


def write_report(out: Path, files: dict[str, bytes], overwrite: bool) -> None:
    """Write the report's files into a staging folder beside `out`, then rename it to `out`
    (replacing an existing `out` only with `overwrite`)."""
    try:
        with staged_folder(out, overwrite) as folder:
            for name, data in files.items():
                (folder / name).write_bytes(data)
    except FileExistsError:
        raise InputError(f"{out} exists; pass --overwrite to replace it") from None


def working_size(inference: Inference, records: bool) -> str:
    """What "model" resolution means in a report: the model's input size, or the photos resized by F."""
    if inference.batched:
        return "the model's {1}x{0}".format(*inference.size)
    return f"each record's stored size (photos resized by {inference.scale:g})" if records else \
        f"each photo resized by {inference.scale:g}"


def default_out(model: Path, records: Path | None, split: str, data: Path | None) -> Path:
    """`<model's folder>/evaluations/<model stem>-<records folder>-<split>` or `...-<data folder>`."""
    source = f"{records.resolve().name}-{split}" if data is None else data.resolve().name
    return model.parent / "evaluations" / f"{model.stem}-{source}"


def print_table(metrics: dict) -> None:
    print(f"\n{'':<24}" + "".join(f"{name:>11}" for name in ("IoU", "Dice", "precision", "recall")))
    for resolution, entry in metrics["scores"].items():
        print(f"at {entry['size']}")
        print(f"  {'mean of ' + str(metrics['photos']) + ' photos':<22}" + "".join(
            f"{entry['mean'][name]:>11.4f}" for name in SCORES))
        print(f"  {'pooled pixels':<22}" + "".join(f"{entry['pooled'][name]:>11.4f}" for name in SCORES))
    instances = metrics.get("instances")
    if instances:
        errors = ", ".join(f"{name} {_percent(instances[key])}" for name, key in (
            ("count", "count_relative_error"), ("D50", "d50_relative_error"), ("D80", "d80_relative_error")))
        print(f"stones at the original size ({instances['predicted']}), pooled: {instances['true_count']} true "
              f"({instances['true_left_out']} smaller ones left out), "
              f"{instances['predicted_count']} predicted; precision {instances['precision']:.4f}, recall "
              f"{instances['recall']:.4f}, F1 {instances['f1']:.4f} at IoU >= {stones.MATCH_IOU}; errors: {errors}")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


# ----------------------------------------------------------------------------- the command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stoneseg.evaluate",
        description="Score a model: per-photo IoU, Dice, precision and recall of the stone class, their mean "
                    "over photos and the pooled all-pixel scores, and with --data its stones (true and predicted "
                    "counts, precision, recall and F1 of stones matched one-to-one at IoU >= 0.5, relative errors "
                    "of D50 and D80) per photo and pooled, written with a contact sheet of the worst photos to a "
                    "report folder (metrics.json, per_image.csv, worst.png).",
        epilog=CONVENTIONS + " Photos reach the model as in stoneseg.predict: squashed to its input size, or "
                             "resized by its scale (--scale overrides), whole or in tiles. --records scores at the "
                             "records' stored size (they hold resized masks only): squash records of the model's "
                             "input size for a squash model, scale records of its F for a model at scale F, each "
                             "whole; --data also at each photo's original size, where stones are scored: the "
                             "true stones are the true mask's 8-connected regions, the predicted ones the mask split "
                             "as predict splits it (--instances split) or its plain regions (--instances regions); "
                             "D values by area, stones touching the photo's edge left out, as predict's defaults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", type=Path, metavar="MODEL.keras", help="trained model (e.g. runs/<run>/best.keras)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--records", type=Path, metavar="DIR", help="records folder (manifest.json and shards)")
    source.add_argument("--data", type=Path, metavar="DIR",
                        help="folder of photos and masks in a layout tools.build_records reads")
    parser.add_argument("--split", choices=("train", "val", "test"), default="val", help="records split to score")
    parser.add_argument("--threshold", type=float, default=0.5, help="stone where the probability is at least this")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="report folder; default <model's folder>/evaluations/<model stem>-<records folder>-"
                             "<split> or <model stem>-<data folder>")
    parser.add_argument("--worst", type=int, default=8, metavar="N", help="photos on the contact sheet (0: none)")
    parser.add_argument("--instances", choices=tuple(INSTANCE_MODES), default="split",
                        help="with --data, how predicted stones are found: split as predict splits them, or the "
                             "mask's plain 8-connected regions (the count before splitting)")
    parser.add_argument("--min-distance", type=float, default=stones.MIN_DISTANCE_FRACTION, metavar="FRACTION",
                        help="watershed seeds at least this share of the photo's shorter side apart, as in predict")
    parser.add_argument("--scale", type=float, default=None, metavar="F",
                        help="resize photos by F (0 < F <= 1) for the model instead of the scale it records")
    parser.add_argument("--batch-size", type=int, default=4, help="photos (or tiles) per model call")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=precision.HELP)
    parser.add_argument("--workers", type=int, default=cli.cores(), help="threads decoding photos with --data")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--skip-hash", action="store_true",
                        help="with --records: check only the shards' sizes against manifest.json, not their SHA-256")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold <= 1:
        parser.error("--threshold must be between 0 and 1")
    if args.batch_size < 1 or args.workers < 1 or args.worst < 0:
        parser.error("--batch-size and --workers must be at least 1, --worst at least 0")
    if args.scale is not None and not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale:g}")
    if not 0 <= args.min_distance < 1:
        parser.error(f"--min-distance must be at least 0 and below 1 (a share of the shorter side), "
                     f"got {args.min_distance:g}")
    return args


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Run the tool; the exit status is 0 when every photo was scored, 1 otherwise."""
    args = parse_args(argv)
    out = args.out or default_out(args.model, args.records, args.split, args.data)
    for note in recover(out.parent, out.name):
        print(f"{PROG}: {note}", file=sys.stderr)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it (or choose another --out)")
    check_model_file(args.model)
    if args.data is not None:
        inventory = find_pairs(args.data)  # as tools.build_records pairs them
        if not inventory.pairs:
            raise InputError(f"no photo/mask pairs in {args.data}")
        total = len(inventory.pairs)
    else:
        manifest = load_manifest(args.records)
        check_shards(args.records, manifest, [args.split], hashes=not args.skip_hash)
        total = manifest["splits"][args.split]["examples"]
    tf = cli.import_tensorflow()
    resolved = precision.on_this_machine(args.precision)
    print(resolved.describe(), flush=True)
    inference = Inference(load_model(args.model, resolved), scale=args.scale, batch_size=args.batch_size, name=str(args.model))
    if args.data is None:
        check_records_fit(inference, manifest, args.records, args.model)

    source = f"{args.data}" if args.data is not None else f"{args.records} (split {args.split})"
    print(f"Evaluating {args.model} on {total} photo(s) of {source}, {inference.describe()}, at threshold "
          f"{args.threshold}", flush=True)
    started = time.perf_counter()
    progress = cli.Progress(total, "photo", PROG)
    worst = WorstPhotos(args.worst)
    if args.data is not None:
        problems = [str(problem) for problem in inventory.problems]
        for problem in problems:
            cli.error_line(PROG, problem)
        find_stones = partial(predicted_stones, output=inference.output, mode=args.instances,
                              min_distance=args.min_distance)
        photos, unreadable = score_folder(inference, args.data, inventory.pairs, args.threshold, args.workers, worst,
                                          progress, find_stones)
        problems += unreadable
    else:
        try:
            photos, problems = score_records(inference, args.records, args.split, args.threshold, worst, progress), []
        except tf.errors.DataLossError as error:
            raise corrupted(args.records, manifest, [args.split], error.message.splitlines()[0]) from None
    if not photos:
        raise InputError("no photo could be scored (each is named above); nothing was written")

    photos.sort(key=lambda photo: photo.name)
    resolutions = [MODEL] + ([ORIGINAL] if args.data is not None else [])
    working = working_size(inference, records=args.data is None)
    metrics = {
        "model": str(args.model),
        "source": {"data": str(args.data)} if args.data is not None else {"records": str(args.records),
                                                                          "split": args.split},
        "threshold": args.threshold,
        "photos": len(photos),
        "scores": {res: {"size": working if res == MODEL else "each photo's original size",
                         **summary(photos, res)} for res in resolutions},
        "instances": instance_summary(photos, args.instances, args.min_distance, inference.output, working)
        if args.data is not None else None,
        "worst": [{"file": score.name, "iou": score.ranking_iou()} for score, *_ in worst.sorted()],
        "skipped": problems,
        "conventions": CONVENTIONS,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    files = {"metrics.json": (json.dumps(metrics, indent=2) + "\n").encode(),
             "per_image.csv": per_image_csv(photos, resolutions)}
    if args.worst:
        title = f"{args.model} on {source}: the {len(metrics['worst'])} lowest IoU" + (
            " at original size" if args.data is not None else f" at {working}")
        files[SHEET] = io.encode_png(contact_sheet(worst.sorted(), title))
    write_report(out, files, args.overwrite)

    print_table(metrics)
    if metrics["worst"]:
        print("lowest IoU: " + ", ".join(f"{entry['file']} {entry['iou']:.3f}" for entry in metrics["worst"]))
    print(f"report: {out}/ ({', '.join(files)}) in {time.perf_counter() - started:.1f} s")
    if problems:
        print(f"{PROG}: {len(problems)} of {len(problems) + len(photos)} photo(s) could not be scored (each is named "
              "above) and are left out; metrics.json lists them under 'skipped'", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
