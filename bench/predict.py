"""Seconds per 3456x4806 photo for `python -m stoneseg.predict`, with the decode share shown on its own.

    python -m bench.predict [--photos 8] [--repeats 3] [--batch-size 4] [--tile]

On the sample photos in data/bench-sample (written by tools.make_sample if missing), with a real
resnet18-UNet at 256x256 (random weights: the timing does not depend on them):
(1) each stage alone, photo by photo: decode (io.read_photo: DCT-reduced decode + area resize), the
    model step (a batch of --batch-size, per photo), and finishing (bilinear upsample to 3456x4806,
    threshold, stone count, PNG encode and atomic write); medians over the photos;
(2) end to end: stoneseg.predict's pipeline on the photos, where decoding and writing overlap the
    model (the model loaded beforehand, as it is once per run); the median of --repeats runs, without
    and with --overlay;
(3) the same with masks and overlays on the 20 stones20 photos (512 to 2000 px), when they are there.
Target: decode takes less than the model step. --tile also times one photo in 512x512 tiles.
"""

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.machine import describe  # noqa: E402
from stoneseg import io, predict  # noqa: E402
from stoneseg.model import build_unet  # noqa: E402
from tools.make_sample import write_sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "bench-sample"
STONES20 = REPO.parent / "shared" / "data" / "stones20"
SIZE = 256


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def quietly(run):
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return run()


def end_to_end(model, model_path: Path, photos: list[Path], scratch: Path, batch_size: int, repeats: int,
               overlay: bool) -> list[float]:
    """Seconds of `repeats` runs of stoneseg.predict's pipeline over `photos` (after one untimed run)."""
    times = []
    for repeat in range(repeats + 1):  # the first run traces the predict function: not counted
        out = scratch / f"out-{'overlay-' if overlay else ''}{len(photos)}-{repeat}"
        options = predict.parse_args([str(model_path), *map(str, photos), "--out", str(out),
                                      "--batch-size", str(batch_size)] + (["--overlay"] if overlay else []))
        out.mkdir()
        times.append(seconds(lambda: quietly(lambda: predict.Run(model, options, photos).predict())))
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=8, help="sample photos to predict")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs")
    parser.add_argument("--batch-size", type=int, default=4, help="photos per model call")
    parser.add_argument("--tile", action="store_true", help="also time one photo in 512x512 tiles")
    args = parser.parse_args()

    if not SAMPLE.exists():
        print(f"writing the bench sample (20 photos of 3456x4806) to {SAMPLE}")
        write_sample(SAMPLE, count=20)
    photos = sorted(path for path in SAMPLE.glob("Image*.JPG"))[:args.photos]
    for photo in photos:
        photo.read_bytes()  # warm the page cache
    model = build_unet((SIZE, SIZE, 3))
    height, width = io.read_photo(photos[0], SIZE)[1]
    print(describe())
    print(f"{len(photos)} photos of {width}x{height} (width x height) from {SAMPLE}; resnet18-UNet {SIZE}x{SIZE}; batch "
          f"{args.batch_size}")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        decoded, decode_times = [], []
        for photo in photos:
            decode_times.append(seconds(lambda: decoded.append(io.read_photo(photo, SIZE))))
        images = np.stack([image for image, _ in decoded])
        batches = [images[first:first + args.batch_size] for first in range(0, len(images), args.batch_size)]
        predict.run_model(model, batches[0], args.batch_size)  # trace the predict function once
        model_times, probabilities = [], []
        for batch in batches:
            model_times.append(seconds(lambda: probabilities.extend(
                predict.run_model(model, batch, args.batch_size))) / len(batch))
        finish_times = [seconds(lambda: predict.finish_photo(photo, probability, original, scratch, 0.5, False))
                        for photo, probability, (_, original) in zip(photos, probabilities, decoded)]

        model_path = scratch / "unet.keras"
        model.save(model_path)
        loaded = predict.load_model(model_path)
        runs = {overlay: [elapsed / len(photos) for elapsed in end_to_end(
                    loaded, model_path, photos, scratch, args.batch_size, args.repeats, overlay)]
                for overlay in (False, True)}

        decode, step, finish = (statistics.median(times) for times in (decode_times, model_times, finish_times))
        total = decode + step + finish
        print("per photo, each stage alone (median over photos):")
        print(f"  decode to {SIZE}x{SIZE}                        {decode:7.3f} s  ({decode / total:.0%} of the stages)")
        print(f"  model step                                {step:7.3f} s  ({step / total:.0%})")
        print(f"  upsample + threshold + count + PNG write  {finish:7.3f} s  ({finish / total:.0%})")
        print(f"  sum of the stages                         {total:7.3f} s")
        print(f"end to end, stoneseg.predict's pipeline, stages overlapping (model loaded; median of {args.repeats} "
              "runs):")
        for overlay, times in runs.items():
            print(f"  masks{' and overlays' if overlay else '             '}  {statistics.median(times):.3f} s/photo  "
                  f"(runs: {', '.join(f'{t:.3f}' for t in times)})")
        print(f"decode / model step = {decode / step:.2f}  (target: below 1)  "
              f"load average now {os.getloadavg()[0]:.1f}")

        if STONES20.is_dir():
            real = predict.find_photos([STONES20])
            times = end_to_end(loaded, model_path, real, scratch, args.batch_size, args.repeats, overlay=True)
            print(f"stones20, {len(real)} photos of 512 to 2000 px, masks and overlays, end to end (model loaded; median "
                  f"of {args.repeats} runs): {statistics.median(times):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")

        if args.tile:
            tiled = predict.tile_model(model, predict.DEFAULT_TILE)
            photo = io.read_photo_full(photos[0])
            predict.tiled_probability(tiled, photo[:predict.DEFAULT_TILE, :predict.DEFAULT_TILE], 0, args.batch_size)
            tile_time = seconds(lambda: predict.tiled_probability(tiled, photo, predict.DEFAULT_TILE_OVERLAP,
                                                                  args.batch_size))
            rows = predict.tile_starts(photo.shape[0], predict.DEFAULT_TILE, predict.DEFAULT_TILE_OVERLAP)
            columns = predict.tile_starts(photo.shape[1], predict.DEFAULT_TILE, predict.DEFAULT_TILE_OVERLAP)
            print(f"tiled model pass, one photo, {len(rows) * len(columns)} tiles of {predict.DEFAULT_TILE}x"
                  f"{predict.DEFAULT_TILE} overlapping by at least {predict.DEFAULT_TILE_OVERLAP}: {tile_time:.1f} s")


if __name__ == "__main__":
    main()
