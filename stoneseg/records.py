"""The records format (records/README.md) in one place: the manifest's name and version, the features of
a record, reading a manifest, its mode (squash or scale) and the size of a record it implies, and
checking the shards against the sizes and SHA-256 it lists.

The builder (whose decode workers must never load TensorFlow), the tf.data reader and the tests all take
the format from here, so nothing here imports TensorFlow.
"""

import hashlib
import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stoneseg import io
from stoneseg.cli import InputError, cores

# 2: the manifest lists each shard's size and SHA-256 ("checksums"); 3: "mode" and "scale"; 4: the instance
# targets boundary/png and distance/png in every record, and the manifest's "boundary_width".
FORMAT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)  # a version 2 manifest has no "mode": it describes squash records
TARGETS_VERSION = 4  # the first version whose records hold the instance targets
MANIFEST = "manifest.json"
MODES = ("squash", "scale")

# The features of every record, one value each: "bytes" or "int" (int64).
FEATURES = {
    "image/png": "bytes",  # the resized photo, PNG, RGB
    "mask/png": "bytes",  # the resized mask, PNG, one channel, values 0 and 1
    "boundary/png": "bytes",  # format 4: the boundary band at the record's size, PNG, values 0 and 1
    "distance/png": "bytes",  # format 4: each stone's normalised distance to its edge, PNG, 0..255 for 0..1
    "image/height": "int",  # the resized size
    "image/width": "int",
    "source/name": "bytes",  # the photo's path relative to the input folder
    "source/height": "int",  # the photo's original size, after EXIF orientation
    "source/width": "int",
    "source/sha256": "bytes",  # hex SHA-256 of the photo file
}
_HASH_CHUNK = 2**24


def load_manifest(records_dir) -> dict:
    """The manifest of the records in `records_dir`, with its "mode" ("squash" or "scale"), "scale" (F, or
    None for squash) and "image_size" ([H, W] for squash, None for scale); an InputError if there is none,
    it is of another format or it contradicts itself."""
    records_dir = Path(records_dir)
    path = records_dir / MANIFEST
    if records_dir.exists() and not records_dir.is_dir():
        raise InputError(f"{records_dir} is a file, not a folder of records")
    if not path.is_file():
        raise InputError(f"{path}: no manifest; build records first with "
                         f"`python -m tools.build_records --out {shlex.quote(str(records_dir))}`")
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a records manifest ({error})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise InputError(f"{path}: records format version {version!r}, this stoneseg reads "
                         f"{' and '.join(map(str, READABLE_VERSIONS))}; rebuild them with "
                         f"`python -m tools.build_records --out {shlex.quote(str(records_dir))} --overwrite`")
    manifest.setdefault("mode", "squash")
    manifest.setdefault("scale", None)
    mode, scale, size = manifest["mode"], manifest["scale"], manifest.get("image_size")
    squash = mode == "squash" and scale is None and _is_size(size)
    scaled = mode == "scale" and size is None and isinstance(scale, (int, float)) and 0 < scale <= 1
    if not (squash or scaled):
        raise InputError(f"{path}: contradictory manifest (mode {mode!r}, scale {scale!r}, image_size {size!r}): "
                         "squash records have an image_size [H, W] and no scale, scale records a scale in (0, 1] "
                         "and no image_size")
    return manifest


def describe(manifest: dict) -> str:
    """"squash 256x256" or "scale 0.5": the records' mode in a few words, for messages."""
    if manifest["mode"] == "scale":
        return f"scale {manifest['scale']:g}"
    return f"squash {manifest['image_size'][0]}x{manifest['image_size'][1]}"


def record_size(manifest: dict, source_size) -> tuple[int, int]:
    """The (height, width) of the record of a photo of `source_size` (height, width)."""
    if manifest["mode"] == "scale":
        return io.Scale(manifest["scale"]).of(tuple(source_size))
    return tuple(manifest["image_size"])


def _is_size(size) -> bool:
    return isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size)


def split_size(manifest: dict, split: str) -> int:
    """Number of examples in `split` (0 when the split is absent)."""
    return manifest["splits"].get(split, {}).get("examples", 0)


def shard_checksum(path: Path) -> dict:
    """{"bytes": size, "sha256": hex digest} of one shard file, as the manifest lists it."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return {"bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def check_shards(records_dir, manifest: dict, splits, hashes: bool = True) -> None:
    """Raise an InputError naming every shard of `splits` that is missing, or whose size (and, with
    `hashes`, SHA-256) differs from the manifest's, with the command that rebuilds the records."""
    records_dir = Path(records_dir)
    for split in splits:
        if split not in manifest["splits"]:
            raise InputError(f"{records_dir / MANIFEST}: no {split!r} split (it has {', '.join(manifest['splits'])})")
    names = [name for split in splits for name in manifest["splits"][split]["shards"]]
    expected = manifest["checksums"]
    problems = []
    present = []
    for name in names:
        path = records_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != expected[name]["bytes"]:
            problems.append(f"{path} is {path.stat().st_size} bytes, manifest.json says {expected[name]['bytes']}")
        else:
            present.append(name)
    if hashes:
        with ThreadPoolExecutor(cores()) as pool:  # hashlib releases the GIL on large reads
            found = dict(zip(present, pool.map(lambda name: shard_checksum(records_dir / name)["sha256"], present)))
        problems += [f"{records_dir / name} is damaged (its SHA-256 differs from manifest.json's)"
                     for name in present if found[name] != expected[name]["sha256"]]
    if problems:
        raise InputError(f"{'; '.join(problems)}. Rebuild the records: {rebuild_command(records_dir, manifest)}")


def corrupted(records_dir, manifest: dict, splits, detail: str) -> InputError:
    """The error for a record TensorFlow found corrupted (`detail`) while reading `splits`: the damaged
    shard found by its SHA-256, or, if every shard matches the manifest, the splits' shards as a whole."""
    try:
        check_shards(records_dir, manifest, splits, hashes=True)
    except InputError as error:
        return error
    return InputError(f"{Path(records_dir)}: a record of the {' or '.join(splits)} shards is corrupted ({detail}), "
                      f"although every shard matches manifest.json (damaged as it was written?). Rebuild the records: "
                      f"{rebuild_command(records_dir, manifest)}")


def rebuild_command(records_dir, manifest: dict) -> str:
    """The command that writes these records again from their photos, with the options they were built with."""
    words = ["python", "-m", "tools.build_records", "--data", manifest["input"], "--out", str(records_dir),
             *manifest["build_options"], "--overwrite"]
    return " ".join(shlex.quote(str(word)) for word in words)
