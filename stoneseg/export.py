"""Deployable copies of a trained model, each checked against it: `python -m stoneseg.export MODEL.keras
--format saved_model|litert|onnx --out PATH --photo PHOTO...`.

All three formats hold the same serving function: uint8 RGB images `images` [N, H, W, 3] in, float32
stone probabilities `probabilities` [N, H, W, 1] out, and for a model with a second output (train --output
boundary|distance) that output's map under its own name (`boundary` or `distance`) [N, H, W, 1] beside them. It is written as a SavedModel by Keras'
ExportArchive, converted from that SavedModel to LiteRT by the TFLite converter (what Keras'
`model.export(format="litert")` does, with builtin ops only, so no Flex delegate is needed on a device)
and to ONNX by tf2onnx (what `model.export(format="onnx")` does). `model.export` itself exports the
float32 `call` with an unnamed output; a deployment wants the photo's own bytes in and a named output.

Before anything is published, the artifact is loaded back by its own runtime (tf.saved_model.load,
LiteRT's interpreter from ai-edge-litert, onnxruntime), run on real photos decoded by stoneseg.io and
compared with the Keras model. A JSON description (input, output, the model's photo scale and the
verification figures) travels with it: `assets.extra/stoneseg.json` inside a SavedModel, `PATH.json`
beside a .tflite or .onnx file.
"""

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from stoneseg import cli, io
from stoneseg.choices import OUTPUT_STRIDE
from stoneseg.cli import InputError
from stoneseg.files import partial_path, recover, staged_folder
from stoneseg.inference import check_model_file, load_model, model_input_size
from stoneseg.precision import Precision

PROG = "export"
FORMATS = ("saved_model", "litert", "onnx")
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}  # a SavedModel is a folder
QUANTIZATIONS = ("dynamic", "float16")  # LiteRT only
# The runtime modules each format is verified with (and converted with, for ONNX); the [export] extra.
RUNTIME_MODULES = {"saved_model": (), "litert": ("ai_edge_litert",), "onnx": ("tf2onnx", "onnxruntime")}

SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
SAVED_MODEL_METADATA = Path("assets.extra") / "stoneseg.json"  # TF Serving's folder for files beside the graph

THRESHOLD = 0.5
FLOAT_MAX_ABS_DIFF = 1e-4
FLOAT_MIN_AGREEMENT = 0.999
QUANTIZED_MIN_AGREEMENT = 0.99
# A model of any input size is verified on each photo at its scale, mirror-padded to multiples of 32 as
# predict feeds it, and centre-cropped to at most this side, which keeps the check to seconds on a CPU.
VERIFY_MAX_SIDE = 1024


# ----------------------------------------------------------------------------- the model and its photos
def export_input_size(model, model_path: Path, requested: tuple[int, int] | None, format: str):
    """The (height, width) the export takes, or None for any multiple of 32 (SavedModel and ONNX only)."""
    height, width = model.input_shape[1:3]
    if height is not None and width is not None:
        if requested is not None and requested != (height, width):
            raise InputError(f"{model_path} takes {height}x{width} images only; --input-size is for models "
                              "that take any size")
        return height, width
    if requested is None and format == "litert":
        raise InputError(f"{model_path} takes images of any size and a LiteRT model needs a fixed one: give "
                         "--input-size (e.g. the crop size it was trained on, train --crop)")
    return requested


def verification_image(photo: Path, model_size: tuple[int, int] | None, scale: float | None,
                       input_size: tuple[int, int] | None) -> np.ndarray:
    """`photo` as a deployment would feed it, RGB uint8 (H, W, 3).

    A model of one size gets the photo squashed to that size, as predict does. A model of any size gets
    the photo resized by its scale (1 if it has none), then centre-cropped or mirror-padded to the
    export's input size, or, without one, mirror-padded to multiples of 32 (as predict does) of at
    most VERIFY_MAX_SIDE.
    """
    if model_size is not None:
        return io.read_photo(photo, model_size)[0]
    image = io.read_photo(photo, io.Scale(scale or 1.0))[0]
    if input_size is None:
        input_size = tuple(min(VERIFY_MAX_SIDE, side + -side % OUTPUT_STRIDE) for side in image.shape[:2])
    return _fit(image, input_size)


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` centre-cropped, or mirror-padded on the bottom and right, to `size` (height, width)."""
    for axis, target in enumerate(size):
        excess = image.shape[axis] - target
        if excess > 0:
            image = np.take(image, range(excess // 2, excess // 2 + target), axis=axis)
    short_y, short_x = size[0] - image.shape[0], size[1] - image.shape[1]
    if short_y or short_x:
        image = cv2.copyMakeBorder(image, 0, short_y, 0, short_x, cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------- writing each format
def output_names(model) -> list[str]:
    """The serving function's outputs, in the model's order: OUTPUT_NAME, then the second output's kind."""
    from stoneseg.model import model_output

    kind = model_output(model)
    return [OUTPUT_NAME] + ([] if kind == "binary" else [kind])


def serving_function(model, input_size: tuple[int, int] | None):
    """The function every format holds, and its input signature: uint8 images in, probabilities (and a
    second output's map) out."""
    import tensorflow as tf

    height, width = input_size or (None, None)
    spec = tf.TensorSpec((None, height, width, 3), tf.uint8, name=INPUT_NAME)

    def serve(images):
        if input_size is None:  # a clear error instead of a shape clash deep inside the decoder
            tf.debugging.assert_equal(tf.shape(images)[1:3] % OUTPUT_STRIDE, 0, message=(
                f"{INPUT_NAME}: height and width must be multiples of {OUTPUT_STRIDE}"))
        maps = model(tf.cast(images, tf.float32), training=False)
        return dict(zip(names, maps if isinstance(maps, (list, tuple)) else [maps]))

    names = output_names(model)
    return serve, spec


def write_saved_model(model, input_size, path: Path) -> None:
    """A SavedModel with one signature, SIGNATURE: INPUT_NAME -> OUTPUT_NAME."""
    import keras

    serve, spec = serving_function(model, input_size)
    archive = keras.export.ExportArchive()
    # No archive.track(model): the endpoint tracks the variables it uses, and tracking the model as well
    # stores every weight twice (Keras 3.15 saves its variables and their tf.Variable copies: 110 MB, not 55).
    archive.add_endpoint(SIGNATURE, serve, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def write_litert(model, input_size, path: Path, quantize: str | None) -> None:
    """A .tflite flatbuffer of builtin ops, from the SavedModel of `write_saved_model`."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="stoneseg-export-") as scratch:
        write_saved_model(model, input_size, Path(scratch))
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize is not None:  # "dynamic": int8 weights; "float16": float16 weights
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises its own ConverterError with the MLIR diagnostics
            raise InputError(f"the LiteRT converter failed: {str(error).splitlines()[0]}") from None
    path.write_bytes(flatbuffer)


def write_onnx(model, input_size, path: Path) -> None:
    """An .onnx file converted from the serving function by tf2onnx."""
    import logging

    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    serve, spec = serving_function(model, input_size)
    tf2onnx.convert.from_function(tf.function(serve, autograph=False), input_signature=[spec], output_path=str(path))


def write_artifact(model, format: str, path: Path, input_size, quantize: str | None = None) -> None:
    """Export `model` in `format` to `path` (a folder for a SavedModel, else a file)."""
    if format == "saved_model":
        write_saved_model(model, input_size, path)
    elif format == "litert":
        write_litert(model, input_size, path, quantize)
    else:
        write_onnx(model, input_size, path)


# ----------------------------------------------------------------------------- loading each format back
def open_artifact(format: str, path: Path, threads: int | None = None, outputs=(OUTPUT_NAME,)):
    """The artifact loaded by its own runtime, as a function: uint8 images (N, H, W, 3) -> float32 maps
    (N, H, W, len(outputs)), the named `outputs` side by side (`output_names`). `threads`: CPU threads for
    LiteRT and ONNX Runtime (their default if None)."""
    outputs = list(outputs)
    if format == "saved_model":
        import tensorflow as tf

        signature = tf.saved_model.load(str(path)).signatures[SIGNATURE]

        def run(images):
            maps = signature(**{INPUT_NAME: tf.constant(images)})
            return np.concatenate([maps[name].numpy() for name in outputs], axis=-1)
        return run
    if format == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner(SIGNATURE)
        return lambda images: np.concatenate([runner(**{INPUT_NAME: images})[name] for name in outputs], axis=-1)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: np.concatenate(session.run(outputs, {INPUT_NAME: images}), axis=-1)




# ----------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class Agreement:
    """How closely an export's probabilities follow the Keras model's on some pixels."""
    max_abs_diff: float
    mask_agreement: float  # share of pixels on the same side of THRESHOLD
    pixels: int


def compare(reference: np.ndarray, exported: np.ndarray) -> Agreement:
    """The agreement of the export's probabilities with the Keras model's (same shape)."""
    if reference.shape != exported.shape:
        raise InputError(f"the export returns shape {exported.shape}, the Keras model {reference.shape}")
    same_side = (reference >= THRESHOLD) == (exported >= THRESHOLD)
    return Agreement(float(np.max(np.abs(reference.astype(np.float64) - exported))), float(np.mean(same_side)),
                     reference.size)


def pooled(agreements: list[Agreement]) -> Agreement:
    """All photos' pixels together: the largest difference and the agreement over every pixel."""
    pixels = sum(a.pixels for a in agreements)
    return Agreement(max(a.max_abs_diff for a in agreements),
                     sum(a.mask_agreement * a.pixels for a in agreements) / pixels, pixels)


def verdict(agreement: Agreement, quantized: bool) -> str | None:
    """Why the export fails verification, or None if it passes."""
    if quantized:
        if agreement.mask_agreement < QUANTIZED_MIN_AGREEMENT:
            return (f"mask agreement {agreement.mask_agreement:.3%} < {QUANTIZED_MIN_AGREEMENT:.0%} "
                    "for a quantized export")
        return None
    if agreement.max_abs_diff > FLOAT_MAX_ABS_DIFF:
        return f"max |difference| {agreement.max_abs_diff:.2e} > {FLOAT_MAX_ABS_DIFF:.0e}"
    if agreement.mask_agreement < FLOAT_MIN_AGREEMENT:
        return f"mask agreement {agreement.mask_agreement:.3%} < {FLOAT_MIN_AGREEMENT:.1%}"
    return None


def verify(model, exported, photos: list[Path], images: list[np.ndarray], quantized: bool) -> Agreement:
    """Run the Keras model and the export on each image, print the figures, raise InputError on failure."""
    agreements = []
    for photo, image in zip(photos, images):
        batch = image[None]
        maps = model(batch.astype(np.float32), training=False)  # eager: photo sizes may differ
        reference = np.concatenate([np.asarray(m) for m in (maps if isinstance(maps, (list, tuple)) else [maps])],
                                   axis=-1)
        agreement = compare(reference, exported(batch))
        agreements.append(agreement)
        print(f"  {photo.name}: {image.shape[1]}x{image.shape[0]}, max |difference| {agreement.max_abs_diff:.2e}, "
              f"mask agreement {agreement.mask_agreement:.4%}", flush=True)
    total = pooled(agreements)
    limits = (f"limit: agreement >= {QUANTIZED_MIN_AGREEMENT:.0%}" if quantized else
              f"limits: {FLOAT_MAX_ABS_DIFF:.0e} and {FLOAT_MIN_AGREEMENT:.1%}")
    print(f"  all {len(photos)} photo(s): max |difference| {total.max_abs_diff:.2e}, mask agreement "
          f"{total.mask_agreement:.4%} ({limits})", flush=True)
    failure = verdict(total, quantized)
    if failure:
        raise InputError(f"verification failed: {failure}; nothing was written")
    return total


# ----------------------------------------------------------------------------- what travels with the export
SECOND_OUTPUT_VALUES = {
    "boundary": "probability 0-1 that the pixel is on a stone's boundary band (its rim or a gap between stones)",
    "distance": "the pixel's distance to its stone's edge over the stone's largest, 0-1 (0 on the background)",
}


def describe(args: argparse.Namespace, scale: float | None, input_size, verified: Agreement,
             outputs=(OUTPUT_NAME,)) -> dict:
    """The JSON that travels with the export: its interface, how to resize photos for it, its check."""
    height, width = input_size or (None, None)
    if scale is None:
        resize = "squash each whole photo to the input height x width (area interpolation), as stoneseg.predict does"
    else:
        resize = (f"resize each photo by photo_scale with its aspect ratio kept (a side of n pixels becomes "
                  f"ceil(n * {scale:g})), then feed it whole, mirror-padded at the bottom and right to multiples "
                  "of 32 (crop the output back), or in overlapping tiles of the input size, as stoneseg.predict "
                  "does")
    return {
        "format": args.format,
        "source": args.model.name,
        "photo_scale": scale,
        "resize": resize,
        "signature": SIGNATURE,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, height, width, 3], "values": "RGB 0-255"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, height, width, 1],
                   "values": "stone probability 0-1"},
        "second_output": None if len(outputs) == 1 else {
            "name": outputs[1], "dtype": "float32", "shape": [None, height, width, 1],
            "values": SECOND_OUTPUT_VALUES[outputs[1]]},
        "quantize": args.quantize,
        "verified": {"photos": [photo.name for photo in args.photo], **asdict(verified)},
    }


def metadata_path(format: str, out: Path) -> Path:
    """Where the JSON description goes: inside a SavedModel, beside a file."""
    return out / SAVED_MODEL_METADATA if format == "saved_model" else out.with_name(out.name + ".json")


@contextlib.contextmanager
def staged_output(format: str, out: Path):
    """Temporary paths for the export and its JSON description, moved to `out` (and beside or into it)
    when the block succeeds and removed when it fails, so nothing at `out` is ever half written."""
    if format != "saved_model":
        with partial_path(out) as staging, partial_path(metadata_path(format, out)) as staging_metadata:
            yield staging, staging_metadata
        return
    with staged_folder(out, overwrite=True) as staging:  # main() refused an existing --out without --overwrite
        yield staging, metadata_path(format, staging)


def file_size(path: Path) -> int:
    """Bytes in a file, or in all files under a folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- the command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stoneseg.export",
        description="Export a trained model as a TensorFlow SavedModel, a LiteRT (.tflite) model or an ONNX "
                    "model, check the export against the Keras model on real photos, and only then write it.",
        epilog=f"Every format takes uint8 RGB images '{INPUT_NAME}' [N, H, W, 3] and returns float32 "
               f"probabilities '{OUTPUT_NAME}' [N, H, W, 1]; a SavedModel's signature is '{SIGNATURE}'. H x W is "
               "the model's own size, or for a model of any size (one trained at a photo scale) any multiples of "
               "32, or --input-size. LiteRT always has a fixed size. The photo scale and the interface are written "
               f"to {SAVED_MODEL_METADATA} inside a SavedModel and to PATH.json beside a .tflite or .onnx file. "
               f"Verification: float exports must agree within {FLOAT_MAX_ABS_DIFF:.0e} (max absolute difference) "
               f"and on >= {FLOAT_MIN_AGREEMENT:.1%} of mask pixels at {THRESHOLD}; quantized ones on >= "
               f"{QUANTIZED_MIN_AGREEMENT:.0%}. LiteRT and ONNX need the export extra: pip install -e '.[export]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", type=Path, metavar="MODEL.keras", help="trained model (e.g. runs/<run>/best.keras)")
    parser.add_argument("--format", required=True, choices=FORMATS, default=argparse.SUPPRESS,
                        help="saved_model (a folder), litert (PATH.tflite) or onnx (PATH.onnx)")
    parser.add_argument("--out", type=Path, required=True, default=argparse.SUPPRESS, metavar="PATH",
                        help="where the export goes; refused if it exists, unless --overwrite")
    parser.add_argument("--photo", type=Path, nargs="+", action="extend", required=True, default=argparse.SUPPRESS,
                        metavar="PHOTO", help="real photo(s) to check the export on")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N",
                        help="fixed input size for a model that takes any size (required for litert): N for NxN, "
                             f"or HEIGHT WIDTH, multiples of {OUTPUT_STRIDE}")
    parser.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="litert only: dynamic (int8 weights, about 1/4 the size) or float16 (1/2 the size)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if args.input_size is not None:
        if len(args.input_size) > 2:
            parser.error("--input-size takes HEIGHT [WIDTH]")
        size = tuple(args.input_size) * (3 - len(args.input_size))
        if any(side <= 0 or side % OUTPUT_STRIDE for side in size):
            parser.error(f"--input-size {'x'.join(map(str, size))}: each side must be a positive multiple of "
                         f"{OUTPUT_STRIDE} (the network halves it 5 times)")
        args.input_size = size
    if args.quantize is not None and args.format != "litert":
        parser.error("--quantize is for --format litert")
    suffix = SUFFIXES.get(args.format)
    if suffix and args.out.suffix.lower() != suffix:
        parser.error(f"--out {args.out}: a {args.format} export is a {suffix} file")
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse, before TensorFlow loads, a bad model file, an --out in the way, a missing runtime or photo."""
    check_model_file(args.model)
    in_the_way = [path for path in (args.out, metadata_path(args.format, args.out)) if path.exists()]
    if in_the_way and not args.overwrite:
        raise InputError(f"{in_the_way[0]} exists; pass --overwrite to replace it")
    if args.out.exists() and args.out.is_dir() != (args.format == "saved_model"):
        raise InputError(f"{args.out} exists and is a {'folder' if args.out.is_dir() else 'file'}; a {args.format} "
                          f"export is {'a folder' if args.format == 'saved_model' else 'one file'}")
    if not args.out.parent.is_dir():
        raise InputError(f"{args.out.parent}: no such folder for --out")
    missing = [name for name in RUNTIME_MODULES[args.format] if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"--format {args.format} needs {' and '.join(missing)} (not installed): "
                          "pip install -e '.[export]'")
    for photo in args.photo:
        if not photo.is_file():
            raise InputError(f"{photo}: no such photo")


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Export, verify and publish; 0 on success, 1 with one error line otherwise."""
    args = parse_args(argv)
    for note in recover(args.out.parent, args.out.name):  # a SavedModel folder a killed run left half published
        print(f"{PROG}: {note}", file=sys.stderr)
    check_inputs(args)
    cli.import_tensorflow()
    from stoneseg.model import model_scale

    # float32 whatever the model was trained in (train --precision auto saves bfloat16 layers on bfloat16
    # hardware): exports are float32 graphs, as every runtime and the verification expect.
    model = load_model(args.model, Precision("float32", "exports are float32"))
    scale = model_scale(model)
    input_size = export_input_size(model, args.model, args.input_size, args.format)
    try:
        images = [verification_image(photo, model_input_size(model), scale, input_size) for photo in args.photo]
    except io.ImageError as error:
        raise InputError(str(error)) from None
    shape = "x".join(map(str, input_size)) if input_size else f"any multiple of {OUTPUT_STRIDE}"
    print(f"Exporting {args.model} as {args.format}{f' ({args.quantize})' if args.quantize else ''}: input "
          f"{shape}, photo scale {scale if scale is not None else 'none (photos squashed to the input size)'}",
          flush=True)
    started = time.perf_counter()
    with staged_output(args.format, args.out) as (staging, staging_metadata):
        write_artifact(model, args.format, staging, input_size, args.quantize)
        print(f"Written in {time.perf_counter() - started:.0f} s; verifying it with its own runtime on "
              f"{len(images)} photo(s):", flush=True)
        outputs = output_names(model)
        verified = verify(model, open_artifact(args.format, staging, outputs=outputs), args.photo, images,
                          args.quantize is not None)
        staging_metadata.parent.mkdir(exist_ok=True)
        staging_metadata.write_text(json.dumps(describe(args, scale, input_size, verified, outputs), indent=2) + "\n")
    print(f"Wrote {args.out} ({file_size(args.out) / 1e6:.1f} MB) and {metadata_path(args.format, args.out)} in "
          f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
