"""File size and latency of each export format beside the Keras model, measured in one run.

    python -m bench.export [--model MODEL.keras] [--repeats 15]

Exports a resnet18-UNet of 256x256 (random weights unless --model: the timing does not depend on them)
with stoneseg.export as a SavedModel, LiteRT (float32, dynamic-range int8, float16) and ONNX, loads
each with its own runtime (all usable cores) and times it on random uint8 256x256 images at batch 1 and
batch 8. The Keras model runs as stoneseg.predict runs it (`predict_on_batch`). Each batch size gets
fresh runtimes, warmed up twice; the repeats go round the runtimes in turn, so a busy moment of the
machine hits them all alike. Reported: the median milliseconds per image, and Keras' median / the
export's (above 1: the export is faster). A format whose runtime is not installed is skipped.
"""

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from stoneseg import cli, export, inference  # noqa: E402

SIZE = 256
BATCHES = (1, 8)
FLAGS_THAT_MATTER = ("avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# (label, format, quantize)
EXPORTS = (("SavedModel", "saved_model", None), ("LiteRT float32", "litert", None),
           ("LiteRT dynamic int8", "litert", "dynamic"), ("LiteRT float16", "litert", "float16"),
           ("ONNX", "onnx", None))


def machine() -> str:
    """CPU model, the flags that matter for bfloat16/matrix work, usable cores and load."""
    model, flags = "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    present = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS_THAT_MATTER)
    return (f"CPU: {model}; {present}; {cli.cores()} usable cores; "
            f"load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a trained 256x256 model (default: random weights)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per runtime and batch size")
    args = parser.parse_args()

    cli.import_tensorflow()
    import keras

    from stoneseg.model import build_unet

    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        scratch = Path(scratch)
        if args.model:
            model, keras_file = inference.load_model(args.model), args.model
        else:
            keras.utils.set_random_seed(0)
            model, keras_file = build_unet((SIZE, SIZE, 3)), scratch / "unet.keras"
            model.save(keras_file)
        if model.input_shape[1:3] != (SIZE, SIZE):
            parser.error(f"--model must take {SIZE}x{SIZE} images, not {model.input_shape[1:3]}")

        artifacts = {"Keras (.keras)": (None, keras_file)}
        for label, format, quantize in EXPORTS:
            missing = [name for name in export.RUNTIME_MODULES[format] if importlib.util.find_spec(name) is None]
            if missing:
                print(f"{label}: skipped, {' and '.join(missing)} not installed (pip install -e '.[export]')")
                continue
            path = scratch / f"unet-{label.replace(' ', '-')}{export.SUFFIXES.get(format, '')}"
            started = time.perf_counter()
            export.write_artifact(model, format, path, (SIZE, SIZE), quantize)
            print(f"{label}: exported in {time.perf_counter() - started:.0f} s", flush=True)
            artifacts[label] = (format, path)

        rows = {label: {"MB": export.file_size(path) / 1e6} for label, (_, path) in artifacts.items()}
        images = np.random.default_rng(0).integers(0, 256, (max(BATCHES), SIZE, SIZE, 3), np.uint8)
        for batch in BATCHES:
            runtimes = {label: (lambda x: model.predict_on_batch(x.astype(np.float32))) if format is None
                        else export.open_artifact(format, path, threads=cli.cores())
                        for label, (format, path) in artifacts.items()}
            for run in runtimes.values():
                for _ in range(2):
                    run(images[:batch])
            times = {label: [] for label in runtimes}
            for _ in range(args.repeats):
                for label, run in runtimes.items():
                    started = time.perf_counter()
                    run(images[:batch])
                    times[label].append((time.perf_counter() - started) / batch)
            for label in runtimes:
                rows[label][batch] = statistics.median(times[label]) * 1000
            del runtimes

    keras_row = rows["Keras (.keras)"]
    print(f"\nmedian ms per {SIZE}x{SIZE} image over {args.repeats} calls; x = Keras ms / this ms; {machine()}")
    print(f"{'':22}{'size MB':>9}" + "".join(f"{f'batch {b} ms':>14}{'x':>7}" for b in BATCHES))
    for label, row in rows.items():
        print(f"{label:22}{row['MB']:9.1f}" + "".join(f"{row[b]:14.1f}{keras_row[b] / row[b]:7.2f}" for b in BATCHES))


if __name__ == "__main__":
    main()
