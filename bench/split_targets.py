"""How well can the network split part stones, at best? Perfect maps (the records' own targets) through it.

    python -m bench.split_targets [--data ../shared/data/stones20] [--scale 0.5] [--widths 1 2] [--seeds 4 8 16]

On stones20's 17 photos outside the README's test split (Image06, 09, 12 are never read): each photo's true
stones (io.decode_stones) give the record's mask and targets at --scale, exactly as tools.build_records makes them
(stoneseg.targets.records_targets, one boundary band per --widths value). The mask's thin gaps are then closed by a
3x3 closing, as a network that does not reproduce them closes them, and the maps (the closed mask and the perfect
second map) go through the split: `stones.split_by_network` at each minimum seed size (--seeds), brought to full size
by `stones.labels_at_size`, scored against the true stones at the photo's size (stones.compare_instances, pooled; true
stones below the minimum stone size left out). "binary" is the geometric split of the same closed mask. These are
ceilings: a trained network's maps are blurrier. They chose stoneseg.targets.BOUNDARY_WIDTH and
stoneseg.stones.MIN_SEED_PIXELS.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

from bench import machine
from stoneseg import io, stones, targets
from stoneseg.inference import full_size_mask

REPO = Path(__file__).resolve().parents[1]
STONES20 = REPO.parent / "shared" / "data" / "stones20"
TEST_SPLIT = ("Image06", "Image09", "Image12")  # the README's test photos: never read here


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.split_targets", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, default=STONES20)
    parser.add_argument("--scale", type=float, default=0.5, help="the records' scale")
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2], help="boundary band widths to try")
    parser.add_argument("--seeds", type=int, nargs="+", default=[4, 8, 16], help="minimum seed sizes to try")
    parser.add_argument("--keep-gaps", action="store_true", help="do not close the masks' gaps")
    args = parser.parse_args(argv)
    print(machine.describe())
    masks = sorted(path for path in args.data.glob("*_label.jpg") if not path.name.startswith(TEST_SPLIT))
    comparisons = {}
    for path in masks:
        data = path.read_bytes()
        labels, full = io.decode_stones(data, str(path))
        mask, _ = io.decode_mask(data, io.Scale(args.scale), str(path))
        seen = mask if args.keep_gaps else cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        full_mask = full_size_mask(seen.astype(np.float32), full, 0.5)
        smallest = stones.min_stone_area(mask.shape, full)

        def score(name, predicted):
            comparisons.setdefault(name, []).append(
                stones.compare_instances(labels, predicted, min_true_area=smallest))

        score("binary (geometric split)", stones.stones_of(None, full_mask, "binary"))
        for width in args.widths:
            made = targets.records_targets(labels, mask.shape, mask, width)
            for seed in args.seeds:
                for output, second in (("boundary", made["boundary"].astype(np.float32)),
                                       ("distance", made["distance"] / targets.DISTANCE_LEVELS)):
                    if output == "distance" and width != args.widths[0]:
                        continue  # the distance does not depend on the band's width
                    maps = np.stack([seen.astype(np.float32), second], axis=-1)
                    split = stones.split_by_network(maps, output, min_seed=seed)
                    name = f"{output} (width {width}, seed {seed})" if output == "boundary" else \
                        f"distance (seed {seed})"
                    score(name, stones.labels_at_size(split, full_mask))
    print(f"{len(masks)} photos at scale {args.scale:g}, gaps {'kept' if args.keep_gaps else 'closed'}; "
          f"{stones.instance_scores(next(iter(comparisons.values())))['true_count']} true stones "
          f"({stones.instance_scores(next(iter(comparisons.values())))['true_left_out']} below the minimum left out)")
    print(f"{'split':<34}{'F1':>7}{'precision':>11}{'recall':>8}{'count':>8}{'D50':>8}{'D80':>8}")
    for name, found in comparisons.items():
        s = stones.instance_scores(found)
        count = (s["predicted_count"] - s["true_count"]) / s["true_count"]
        print(f"{name:<34}{s['f1']:>7.3f}{s['precision']:>11.3f}{s['recall']:>8.3f}{count:>+8.1%}"
              f"{s['d50_relative_error']:>+8.1%}{s['d80_relative_error']:>+8.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
