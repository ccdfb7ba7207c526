"""Instance scores of trained boundary/distance models at several seed levels, to choose the level on
photos the models did not train on (the val photos), never on the test split.

    python -m bench.seed_levels RUN/best.keras ... --data FOLDER --photos Image01.JPG ... [--levels 0.3 0.5 0.7]

Each photo runs through each model once (stoneseg.inference, the model's scale, float32); its maps are then
split (stoneseg.stones.stones_of) at every level and matched to the true stones of its mask as evaluate
matches them (IoU 0.5, true stones below the split's minimum left out). Prints, per model and level, the
pooled F1, count error and D50 error over the photos, then the mean ± sd over the models of each kind and level.
"""

import argparse
import os
import statistics
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.machine import describe  # noqa: E402
from stoneseg import io, pairs, stones  # noqa: E402
from stoneseg.inference import Inference, full_size_mask, load_model  # noqa: E402
from stoneseg.precision import Precision  # noqa: E402


def photo_maps(inference: Inference, photo: Path, mask: Path):
    """(maps, full-size mask, true labels, smallest true stone kept) of one photo."""
    image, original = io.read_photo(photo, inference.size)
    maps = inference.maps(image)
    true_labels, _ = io.decode_stones(io.read_bytes(mask), str(mask))
    full = full_size_mask(np.ascontiguousarray(maps[..., 0]), original, 0.5)
    return maps, full, true_labels, stones.min_stone_area(maps.shape[:2], original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL.keras")
    parser.add_argument("--data", type=Path, required=True, help="folder of photos and their masks")
    parser.add_argument("--photos", nargs="+", required=True, help="the photos to score (file names in --data)")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    args = parser.parse_args()
    print(describe())
    masks = {pair.photo: pair.mask for pair in pairs.find_pairs(args.data).pairs}
    by_level = {}  # (output, level) -> F1 of each model
    for model_path in args.models:
        inference = Inference(load_model(model_path, Precision("float32", "bench")), name=str(model_path))
        if inference.output == "binary":
            raise SystemExit(f"{model_path}: a binary model has no seed level")
        photos = [photo_maps(inference, args.data / name, args.data / masks[name]) for name in args.photos]
        for level in args.levels:
            compared = [stones.compare_instances(truth, stones.stones_of(maps, full, inference.output,
                                                                         seed_level=level), min_true_area=smallest)
                        for maps, full, truth, smallest in photos]
            score = stones.instance_scores(compared)
            count_error = score["predicted_count"] / score["true_count"] - 1
            by_level.setdefault((inference.output, level), []).append(score["f1"])
            print(f"{model_path} ({inference.output}) level {level:.2f}: F1 {score['f1']:.3f}, count error "
                  f"{count_error:+.3f}, D50 error {score['d50_relative_error']:+.3f}", flush=True)
    for (output, level), f1s in sorted(by_level.items()):
        spread = f" ± {statistics.stdev(f1s):.3f}" if len(f1s) > 1 else ""
        print(f"{output} level {level:.2f}: F1 {statistics.mean(f1s):.3f}{spread} over {len(f1s)} model(s)")


if __name__ == "__main__":
    main()
