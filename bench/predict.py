"""Seconds per 3456x4806 photo and peak memory for `python -m stoneseg.predict`, for each kind of model.

    python -m bench.predict [--photos 8] [--repeats 3] [--batch-size 4] [--kinds squash256,scale0.25,...]

On the sample photos in data/sample (written by tools.make_sample if missing), with real resnet18-UNets
(random weights: time and memory do not depend on them):
(1) the squash model (256x256), each stage alone, photo by photo (STAGES): decode (io.read_photo:
    DCT-reduced decode + area resize), network (a batch of --batch-size, per photo), full-size mask
    (bilinear upsample to 3456x4806 and threshold), split (stones.split_stones), measure
    (stones.measure_stones), write (mask, instances, stone table and size curve, encoded and written
    atomically), and the overlay apart (--overlay only); medians over the photos. The finishing stages
    start from the sample's true mask area-resized to 256x256, the map of a model right about every pixel
    it sees (an untrained network's noise would time the split on nothing like stones). Then end to end: stoneseg.predict's pipeline, where decoding and writing overlap the model (the
    model loaded beforehand, as it is once per run); the median of --repeats runs, without and with
    --overlay, and with masks and overlays on the 20 stones20 photos (512 to 2000 px) when they are there.
    Target: decode takes less than the model step. Beside the split, the network split of a boundary and of
    a distance model (stones.stones_of on the maps a model right about every pixel would give: the true
    stones' targets, stoneseg.targets.records_targets, at 256x256, brought back to the full-size mask),
    and the same at scale 0.5's working resolution (1728x2403) against a scale-0.5 UNet's model step on
    one photo, tiled as predict runs it. Target: the network split is not the slowest stage.
(2) every kind in --kinds, each in a process of its own so that peaks do not mix: squash256, and scaleF
    (a model of any input size carrying scale F; photos resized by F, whole or tiled as
    stoneseg.inference decides: at 3456x4806, 0.25 runs whole, 0.5 and 1 in 512x512 tiles). Each process
    loads the saved model, predicts the first photo to trace the model, then --kind-photos photos end to
    end (masks written); it reports seconds per photo of that run and memory from /proc: RSS with the model
    loaded, RSS once warmed, and the peak RSS (VmHWM) over the process and over the timed run alone.
(3) --precision-model M.keras (or --precision-model random: an untrained scale-0.5 UNet, timing only):
    the model loaded twice, in float32 and in bfloat16 (stoneseg.inference.load_model), predicts the 20
    stones20 photos (decoded once beforehand) in alternating rounds; prints photos/s of each (median over
    --precision-rounds), the line `bfloat16 / float32 = R`, and, for a trained model, how many pixels of
    the full-size masks agree (the least of any photo and over all photos).
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.machine import describe  # noqa: E402
from stoneseg import inference, io, outputs, predict, stones, targets  # noqa: E402
from stoneseg.precision import Precision  # noqa: E402
from stoneseg.model import build_unet  # noqa: E402
from tools.make_sample import write_sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
STONES20 = REPO.parent / "shared" / "data" / "stones20"
SIZE = 256
KINDS = "squash256,scale0.25,scale0.5,scale1"
STAGES = ("decode", "network", "full-size mask", "split", "measure", "write")
STAGE_HELP = {"decode": f"io.read_photo: DCT-reduced decode + area resize to {SIZE}x{SIZE}",
              "network": "the model step, per photo of a batch",
              "full-size mask": "bilinear upsample to the photo's size + threshold",
              "split": "stones.split_stones: watershed at <= 0.5 Mpx, labels fitted back",
              "split (boundary)": "stones.stones_of of a boundary model's maps at 256x256, to full size",
              "split (distance)": "stones.stones_of of a distance model's maps at 256x256, to full size",
              "measure": "stones.measure_stones with the split's boxes",
              "write": "mask PNG, 16-bit instances PNG, stones CSV, size curve PNG, atomic writes",
              "overlay": "full-resolution decode, draw_stones, JPEG"}
MB = 2**20


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def quietly(run):
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return run()


def memory() -> dict[str, float]:
    """This process's resident set now (VmRSS) and its peak (VmHWM), in MB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> bool:
    """Start VmHWM afresh from the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def kind_model(kind: str):
    """The untrained resnet18-UNet of a kind: squashNNN (fixed NNN x NNN input) or scaleF (any size, scale F)."""
    if kind.startswith("squash"):
        return build_unet((int(kind[len("squash"):]),) * 2 + (3,))
    return build_unet((None, None, 3), scale=float(kind[len("scale"):]))


def measure_kind(kind: str, photos: list[Path], batch_size: int) -> dict:
    """Run in a process of its own: predict the photos with a saved model of `kind` as stoneseg.predict does,
    and return its timing and memory."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        kind_model(kind).save(scratch / "model.keras")
        model = inference.load_model(scratch / "model.keras")
        loaded = memory()["VmRSS"]

        def run(photos, out):
            options = predict.parse_args([str(scratch / "model.keras"), *map(str, photos), "--out", str(out),
                                          "--batch-size", str(batch_size)])
            feed = predict.inference_for(model, options)
            out.mkdir()
            return feed, seconds(lambda: quietly(predict.Run(feed, options, photos).predict))

        run(photos[:1], scratch / "warm-up")  # traces the model's predict function
        warmed = memory()["VmRSS"]
        reset = reset_peak()
        feed, elapsed = run(photos, scratch / "timed")
        peak_timed = memory()["VmHWM"] if reset else float("nan")
    return {"kind": kind, "fed": feed.describe(), "photos": len(photos), "seconds_per_photo": elapsed / len(photos),
            "loaded_mb": loaded, "warmed_mb": warmed, "peak_timed_mb": peak_timed,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def compare_kinds(kinds: list[str], photos: list[Path], batch_size: int) -> None:
    """measure_kind for each kind, each in a fresh Python process, and one table of the results."""
    height, width = io.read_photo(photos[0], 8)[1]
    print(f"\neach kind in its own process: {len(photos)} photo(s) of {width}x{height} timed after one warm-up "
          f"photo, batch {batch_size}; memory in MB (1 MB = 2^20 bytes)")
    maps = ", ".join(f"{factor:g}: {np.prod(io.Scale(factor).of((height, width))) * 4 / MB:.0f}" for factor in (1, 0.5, 0.25))
    print(f"  for reference: the photo {height * width * 3 / MB:.0f} MB (uint8 RGB), its float32 probability map at "
          f"scale {maps} MB, its mask {height * width / MB:.0f} MB")
    print(f"  {'kind':<10}{'s/photo':>9}{'model loaded':>14}{'warmed':>8}{'peak (timed)':>14}{'peak (all)':>12}  fed")
    for kind in kinds:
        command = [sys.executable, "-m", "bench.predict", "--child", kind, "--batch-size", str(batch_size),
                   *map(str, photos)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode:
            print(f"  {kind:<10}failed:\n{done.stderr[-2000:]}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {kind:<10}{result['seconds_per_photo']:>9.2f}{result['loaded_mb']:>14.0f}{result['warmed_mb']:>8.0f}"
              f"{result['peak_timed_mb']:>14.0f}{result['peak_mb']:>12.0f}  {result['fed']}", flush=True)
    print(f"load average now {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=8, help="sample photos for the squash stages and end to end")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs of the squash model")
    parser.add_argument("--batch-size", type=int, default=4, help="photos (or tiles) per model call")
    parser.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                        help="time the squash model's stages and end to end (1)")
    parser.add_argument("--kinds", default=KINDS, help="kinds of model for the per-process comparison (2); '' for none")
    parser.add_argument("--kind-photos", type=int, default=2, help="photos timed per kind after the warm-up photo")
    parser.add_argument("--precision-model", default=None, metavar="M.keras",
                        help="compare bfloat16 with float32 prediction on stones20 with this model (3); 'random': an "
                             "untrained scale-0.5 UNet, timing only")
    parser.add_argument("--precision-rounds", type=int, default=3, help="alternating rounds of (3)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one kind, in its own process
    parser.add_argument("child_photos", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_kind(args.child, args.child_photos, args.batch_size)))
        return

    if args.precision_model:
        print(describe())
        compare_precisions(args.precision_model, args.precision_rounds, args.batch_size)
        if not args.stages and not args.kinds:
            return
    if not SAMPLE.exists():
        print(f"writing the bench sample (20 photos of 3456x4806) to {SAMPLE}")
        write_sample(SAMPLE, count=20)
    photos = sorted(path for path in SAMPLE.glob("Image*.JPG"))[:args.photos]
    for photo in photos:
        photo.read_bytes()  # warm the page cache
    print(describe())
    if args.stages:
        time_squash_stages(photos, args.batch_size, args.repeats)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if kinds:
        compare_kinds(kinds, photos[:args.kind_photos], args.batch_size)


NETWORK_SPLITS = ("split (boundary)", "split (distance)")


def perfect_maps(photo: Path, size: tuple[int, int], truth: np.ndarray) -> dict[str, np.ndarray]:
    """{"split (boundary)": maps, "split (distance)": maps}: (H, W, 2) float32 maps of `size` that a model right
    about every pixel would give, from the photo's true stones (its _label.jpg) and `truth` (its {0, 1} mask
    at `size`)."""
    mask_path = photo.with_name(photo.stem + "_label.jpg")
    labels, _ = io.decode_stones(mask_path.read_bytes(), str(mask_path))
    wanted = targets.records_targets(labels, size, truth)
    return {stage: np.dstack([truth.astype(np.float32), wanted[stage.split("(")[1][:-1]] / scale]).astype(np.float32)
            for stage, scale in zip(NETWORK_SPLITS, (1, targets.DISTANCE_LEVELS))}


def time_network_split_at_scale(photo: Path, batch_size: int, scale: float = 0.5) -> None:
    """The network split at a scale model's working resolution against that model's step on one photo."""
    image, original = io.read_photo(photo, io.Scale(scale))
    unet = inference.Inference(build_unet((None, None, 3), scale=scale), batch_size=batch_size)
    unet.maps(image[:512, :512])  # trace
    step = seconds(lambda: unet.maps(image))
    truth, _ = io.read_mask(photo.with_name(photo.stem + "_label.jpg"), io.Scale(scale))
    mask = inference.full_size_mask(truth.astype(np.float32), original, 0.5)
    for stage, maps in perfect_maps(photo, truth.shape, truth).items():
        split = seconds(lambda: stones.stones_of(maps, mask, stage.split("(")[1][:-1]))
        print(f"  at scale {scale:g} ({image.shape[1]}x{image.shape[0]} working pixels): {stage} {split:.3f} s, "
              f"the model step {step:.2f} s ({unet.describe()}); split / model step = {split / step:.4f}")


def time_squash_stages(photos: list[Path], batch_size: int, repeats: int) -> None:
    """(1): the squash model's stages alone and the pipeline end to end."""
    model = build_unet((SIZE, SIZE, 3))
    height, width = io.read_photo(photos[0], SIZE)[1]
    print(f"{len(photos)} photos of {width}x{height} (width x height) from {SAMPLE}; resnet18-UNet {SIZE}x{SIZE}; "
          f"batch {batch_size}")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        options = predict.parse_args(["model.keras", *map(str, photos), "--out", str(scratch)])
        settings = outputs.OutputSettings.from_args(options)
        decoded, decode_times = [], []
        for photo in photos:
            decode_times.append(seconds(lambda: decoded.append(io.read_photo(photo, SIZE))))
        images = np.stack([image for image, _ in decoded])
        batches = [images[first:first + batch_size] for first in range(0, len(images), batch_size)]
        inference.run_model(model, batches[0], batch_size)  # trace the predict function once
        model_times = []
        for batch in batches:
            model_times.append(seconds(lambda: inference.run_model(model, batch, batch_size)) / len(batch))
        # The untrained network's map is noise; the finishing stages get what a model right about every
        # pixel it sees at 256x256 would give: the sample's true mask area-resized to 256x256.
        stage_times = {stage: [] for stage in STAGES[2:] + NETWORK_SPLITS + ("overlay",)}

        def timed(stage, run):
            started = time.perf_counter()
            result = run()
            stage_times[stage].append(time.perf_counter() - started)
            return result

        for photo, (_, original) in zip(photos, decoded):
            truth, _ = io.read_mask(photo.with_name(photo.stem + "_label.jpg"), SIZE)
            probability = truth.astype(np.float32)
            mask = timed("full-size mask", lambda: inference.full_size_mask(probability, original, 0.5))
            labels, boxes = timed("split", lambda: stones.split_stones(
                mask, options.min_distance * min(mask.shape), return_boxes=True))
            table = timed("measure", lambda: stones.measure_stones(labels, None, boxes))
            timed("write", lambda: outputs.write_photo(photo, mask, labels, table, settings))
            timed("overlay", lambda: io.encode_jpeg(stones.draw_stones(io.read_photo_full(photo), labels),
                                                    outputs.OVERLAY_QUALITY))
            for stage, maps in perfect_maps(photo, (SIZE, SIZE), truth).items():
                timed(stage, lambda: stones.stones_of(maps, mask, stage.split("(")[1][:-1]))

        model_path = scratch / "unet.keras"
        model.save(model_path)
        loaded = inference.load_model(model_path)
        runs = {overlay: [elapsed / len(photos) for elapsed in end_to_end(
                    loaded, model_path, photos, scratch, batch_size, repeats, overlay)]
                for overlay in (False, True)}

        medians = {"decode": statistics.median(decode_times), "network": statistics.median(model_times),
                   **{stage: statistics.median(times) for stage, times in stage_times.items()}}
        total = sum(medians[stage] for stage in STAGES)
        print(f"per photo, each stage alone (median over photos; {len(table)} stones in the last photo):")
        for stage in STAGES + ("overlay",):
            share = f"{medians[stage] / total:4.0%} of the stages" if stage in STAGES else "--overlay only"
            print(f"  {stage:<16}{medians[stage]:7.3f} s  ({share}; {STAGE_HELP[stage]})")
        print(f"  {'sum of stages':<16}{total:7.3f} s  (overlay not included)")
        slowest = max(STAGES, key=medians.get)
        print(f"slowest stage: {slowest}; split / slowest other stage = "
              f"{medians['split'] / max(medians[stage] for stage in STAGES if stage != 'split'):.2f}")
        for stage in NETWORK_SPLITS:
            print(f"  {stage:<16}{medians[stage]:7.3f} s  ({STAGE_HELP[stage]}); / slowest other stage = "
                  f"{medians[stage] / max(medians[other] for other in STAGES if other != 'split'):.2f}")
        time_network_split_at_scale(photos[0], batch_size)
        print(f"end to end, stoneseg.predict's pipeline, stages overlapping (model loaded; median of {repeats} runs):")
        for overlay, times in runs.items():
            print(f"  masks{' and overlays' if overlay else '             '}  {statistics.median(times):.3f} s/photo  "
                  f"(runs: {', '.join(f'{t:.3f}' for t in times)})")
        decode, step = medians["decode"], medians["network"]
        print(f"decode / model step = {decode / step:.2f}  (target: below 1)  "
              f"load average now {os.getloadavg()[0]:.1f}")

        if STONES20.is_dir():
            real = predict.find_photos([STONES20])
            times = end_to_end(loaded, model_path, real, scratch, batch_size, repeats, overlay=True)
            print(f"stones20, {len(real)} photos of 512 to 2000 px, masks and overlays, end to end (model loaded; median "
                  f"of {repeats} runs): {statistics.median(times):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")


def compare_precisions(model_path: str, rounds: int, batch_size: int) -> None:
    """(3): stones20 predicted by one model in float32 and in bfloat16, side by side in alternating rounds."""
    with tempfile.TemporaryDirectory() as scratch:
        if model_path == "random":
            model_path = Path(scratch) / "random.keras"
            build_unet((None, None, 3), scale=0.5).save(model_path)
        feeds = {name: inference.Inference(inference.load_model(Path(model_path), Precision(name, "bench")),
                                           batch_size=batch_size) for name in ("float32", "bfloat16")}
    photos = predict.find_photos([STONES20])
    decoded = [io.read_photo(photo, feeds["float32"].size) for photo in photos]
    print(f"\n(3) {len(photos)} stones20 photos with {model_path}, {feeds['float32'].describe()}; "
          f"{rounds} alternating rounds after one warm-up photo each")
    for feed in feeds.values():
        feed.probability(decoded[0][0])
    rates, maps = {name: [] for name in feeds}, {}
    for _ in range(rounds):
        for name, feed in feeds.items():
            started = time.perf_counter()
            maps[name] = [feed.probability(image) for image, _ in decoded]
            rates[name].append(len(photos) / (time.perf_counter() - started))
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        print(f"  {name:<9} {median[name]:6.2f} photos/s  (rounds: {', '.join(f'{rate:.2f}' for rate in values)})")
    print(f"bfloat16 / float32 = {median['bfloat16'] / median['float32']:.2f}  (prediction, photos/s)")
    if str(model_path).endswith("random.keras"):
        print("  (untrained model: mask agreement not measured)")
        return
    agreeing, total, least = 0, 0, (1.0, "")
    for photo, (_, original), float32, bfloat16 in zip(photos, decoded, maps["float32"], maps["bfloat16"]):
        same = np.count_nonzero(inference.full_size_mask(float32, original, 0.5)
                                == inference.full_size_mask(bfloat16, original, 0.5))
        agreeing, total = agreeing + same, total + original[0] * original[1]
        least = min(least, (same / (original[0] * original[1]), photo.name))
    print(f"full-size masks (threshold 0.5) agreeing with float32's: {agreeing / total:.4%} of all pixels, "
          f"least {least[0]:.4%} ({least[1]})  (target: at least 99.5%)")
    print(f"load average now {os.getloadavg()[0]:.1f}")


def end_to_end(model, model_path: Path, photos: list[Path], scratch: Path, batch_size: int, repeats: int,
               overlay: bool) -> list[float]:
    """Seconds of `repeats` runs of stoneseg.predict's pipeline over `photos` (after one untimed run)."""
    times = []
    for repeat in range(repeats + 1):  # the first run traces the predict function: not counted
        out = scratch / f"out-{'overlay-' if overlay else ''}{len(photos)}-{repeat}"
        options = predict.parse_args([str(model_path), *map(str, photos), "--out", str(out),
                                      "--batch-size", str(batch_size)] + (["--overlay"] if overlay else []))
        out.mkdir()
        run = predict.Run(predict.inference_for(model, options), options, photos)
        times.append(seconds(lambda: quietly(run.predict)))
    return times[1:]


if __name__ == "__main__":
    main()
