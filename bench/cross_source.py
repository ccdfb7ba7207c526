"""Do training choices hold up on photos of another source? Train arms on folds of stones20, several seeds each,
and score every model on the fold's held-out photos at their original size.

    python -m bench.cross_source --work data/cross-source --arm binary="--output binary" \
        --arm distance="--output distance" --seeds 1 2 3 [--folds readme A-to-B B-to-A] [--epochs 10]

Folds (stones20's SOURCES.json names each photo's source: A = segmenteverygrain, Image01-13, beach pebbles,
gravel and sand; B = ImageGrains, Image14-20, river gravel):
  readme   the README's split: records of all 20 photos with --test-fraction 0.15 --seed 42; scored on its
           three test photos (Image06, 09, 12);
  A-to-B   records of source A's photos (train and val, --val-fraction 0.2), scored on all of source B;
  B-to-A   the reverse.
An arm is a name and the `stoneseg.train` flags that make it (quoted, e.g. "--output boundary --recipe cosine");
every arm of a fold trains on the same records for the same budget (--epochs x --epoch-images, early stopping off
with --patience 100; best.keras by the recipe's monitor on the fold's val photos, never on the scored ones), and
is scored by `stoneseg.evaluate --data --precision float32` (pixel IoU pooled over the scored photos, and stones
matched one-to-one at IoU >= 0.5).

Everything goes under --work: photo folders of symlinks to stones20 (never copies), records, runs and their
evaluations. A run or evaluation that finished is not done again, and an unfinished training resumes from its
backup (the same command continues where it stopped). The table prints mean ± sample standard deviation over the
seeds (n given), and --csv keeps one row per run.
"""

import argparse
import csv
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import machine

REPO = Path(__file__).resolve().parents[1]
STONES20 = REPO.parent / "shared" / "data" / "stones20"
FOLDS = ("readme", "A-to-B", "B-to-A")
SOURCES = {"A": "segmenteverygrain", "B": "imagegrains"}  # as SOURCES.json spells them
README_SPLIT = ["--test-fraction", "0.15", "--seed", "42"]
COLUMNS = (("pixel IoU", "iou"), ("F1", "f1"), ("count err", "count_relative_error"),
           ("D50 err", "d50_relative_error"), ("D80 err", "d80_relative_error"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.cross_source", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="folder for photo links, records, runs and reports")
    parser.add_argument("--data", type=Path, default=STONES20, help="the stones20 folder")
    parser.add_argument("--arm", action="append", required=True, metavar='NAME="TRAIN FLAGS"',
                        help="an arm: its name, '=', and its stoneseg.train flags (repeat for each arm)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="train --seed values")
    parser.add_argument("--folds", nargs="+", choices=FOLDS, default=list(FOLDS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epoch-images", type=int, default=240)
    parser.add_argument("--records-flags", default="", help="extra tools.build_records flags (e.g. '--scale 0.25')")
    parser.add_argument("--csv", type=Path, default=None, help="also write one row per run here")
    parser.add_argument("--table-only", action="store_true", help="print the table of what is done; run nothing")
    args = parser.parse_args(argv)
    arms = {}
    for arm in args.arm:
        name, _, flags = arm.partition("=")
        if not name or name in arms or "/" in name:
            parser.error(f"--arm {arm!r}: give a new NAME=\"flags\" (no '/')")
        arms[name] = shlex.split(flags)
    args.arms = arms
    return args


# ----------------------------------------------------------------------------- folds
def sources(data: Path) -> dict[str, str]:
    """Photo file name -> source, from stones20's SOURCES.json."""
    return {entry["file"]: entry["source"] for entry in json.loads((data / "SOURCES.json").read_text())}


def link_folder(folder: Path, data: Path, photos: list[str]) -> Path:
    """`folder` holding symlinks to `photos` of `data` and their _label.jpg masks."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        for name in (photo, Path(photo).stem + "_label.jpg"):
            link = folder / name
            if not link.exists():
                link.symlink_to((data / name).resolve())
    return folder


def prepare_fold(fold: str, args) -> tuple[Path, Path]:
    """(records, folder of the photos to score) of `fold`, built once."""
    base = args.work / fold
    records = base / "records"
    by_source = sources(args.data)
    if fold == "readme":
        train_folder, split = args.data, README_SPLIT
    else:
        trained, scored = (SOURCES["A"], SOURCES["B"]) if fold == "A-to-B" else (SOURCES["B"], SOURCES["A"])
        train_folder = link_folder(base / "train-photos", args.data,
                                   sorted(name for name, source in by_source.items() if source == trained))
        split = ["--val-fraction", "0.2", "--test-fraction", "0"]
    if not (records / "manifest.json").exists():
        run([sys.executable, "-m", "tools.build_records", "--data", str(train_folder), "--out", str(records), *split,
             *shlex.split(args.records_flags)], base / "build_records.log")
    if fold == "readme":
        manifest = json.loads((records / "manifest.json").read_text())
        scored_photos = manifest["splits"]["test"]["sources"]
    else:
        scored_photos = sorted(name for name, source in by_source.items() if source == scored)
    return records, link_folder(base / "scored-photos", args.data, scored_photos)


# ----------------------------------------------------------------------------- runs
def run(command: list[str], log: Path) -> float:
    """Run `command` from the repository root with its output in `log`; seconds taken. A failure stops the bench."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {shlex.join(command)}  (log {log})", flush=True)
    started = time.perf_counter()
    with log.open("a") as out:
        status = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if status:
        sys.exit(f"cross_source: {command[2]} failed with status {status}; see {log}")
    return time.perf_counter() - started


def train_and_score(fold, arm, flags, seed, records, scored, args) -> dict | None:
    """Train one arm/seed on a fold's records (or resume it) and score it; its row, or None with --table-only
    when it is not done."""
    run_dir = args.work / fold / "runs" / f"{arm}-s{seed}"
    report = run_dir / "evaluation"
    history = run_dir / "history.csv"
    epochs_done = len(history.read_text().splitlines()) - 1 if history.exists() else 0
    if args.table_only and not (report / "metrics.json").exists():
        return None
    if epochs_done < args.epochs:
        run([sys.executable, "-m", "stoneseg.train", "--records", str(records), "--run-dir", str(run_dir),
             "--seed", str(seed), "--epochs", str(args.epochs), "--epoch-images", str(args.epoch_images),
             "--patience", "100", *flags], run_dir / "train.log")
    if not (report / "metrics.json").exists():
        run([sys.executable, "-m", "stoneseg.evaluate", str(run_dir / "best.keras"), "--data", str(scored),
             "--out", str(report), "--precision", "float32", "--overwrite"], run_dir / "evaluate.log")
    metrics = json.loads((report / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    monitor = config["recipe"]["settings"]["monitor"]
    with history.open() as file:
        rows = list(csv.DictReader(file))
    best = (min if monitor == "val_loss" else max)(rows, key=lambda row: float(row[monitor]))
    instances = metrics["instances"]
    return {"fold": fold, "arm": arm, "seed": seed, "best_epoch": int(best["epoch"]) + 1,
            "val_iou": float(best["val_iou"]), "iou": metrics["scores"]["original"]["pooled"]["iou"],
            **{key: instances[key] for key in ("f1", "precision", "recall", "count_relative_error",
                                               "d50_relative_error", "d80_relative_error", "true_count",
                                               "predicted_count", "true_left_out")}}


# ----------------------------------------------------------------------------- the table
def spread(values: list[float]) -> str:
    """'mean ± sd' of `values` (sd over seeds; '' for one value)."""
    values = [value for value in values if value is not None and not math.isnan(value)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    return f"{mean:+.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:+.3f}"


def print_table(rows: list[dict]) -> None:
    print("\n| fold | arm | seeds | val IoU | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for fold in dict.fromkeys(row["fold"] for row in rows):
        for arm in dict.fromkeys(row["arm"] for row in rows if row["fold"] == fold):
            runs = [row for row in rows if row["fold"] == fold and row["arm"] == arm]
            cells = [spread([run[key] for run in runs]).lstrip("+") if key in ("iou", "f1") else
                     spread([run[key] for run in runs]) for _, key in COLUMNS]
            print(f"| {fold} | {arm} | {len(runs)} | {spread([run['val_iou'] for run in runs]).lstrip('+')} | "
                  + " | ".join(cells) + " |")


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine.describe(), flush=True)
    print(f"budget: {args.epochs} epochs x {args.epoch_images} images per run; seeds {args.seeds}; "
          f"arms {', '.join(f'{name} ({shlex.join(flags)})' for name, flags in args.arms.items())}", flush=True)
    rows = []
    for fold in args.folds:
        records, scored = prepare_fold(fold, args)
        for seed in args.seeds:  # seed-major: a stopped bench has every arm at the same number of seeds
            for arm, flags in args.arms.items():
                print(f"{fold} / {arm} / seed {seed}", flush=True)
                row = train_and_score(fold, arm, flags, seed, records, scored, args)
                if row is not None:
                    rows.append(row)
    print_table(rows)
    if args.csv and rows:
        with args.csv.open("w", newline="") as file:
            writer = csv.DictWriter(file, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
