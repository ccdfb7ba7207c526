"""Shards → batches: the tf.data input pipeline over the records listed in `manifest.json`.

Photos were decoded and resized once by `tools.build_records`; here each record's PNGs are decoded
once in parallel and cached as uint8, so the per-step path is only shuffle, batch and prefetch.
Augmentation is not done here: it runs inside the train step on the training device, and so does
the random crop of `--crop` (this module only ships whole records, padded to a common size).

Records come in two modes (records/README.md): squash, every photo resized to one fixed size, and
scale, every photo resized by one factor F with its aspect ratio kept, so record sizes differ.
"""

from pathlib import Path

import tensorflow as tf

from stoneseg.choices import OUTPUT_STRIDE
from stoneseg.cli import InputError
from stoneseg.records import (FEATURES, MANIFEST, TARGETS_VERSION, describe, load_manifest, record_size,
                              split_size)
from stoneseg.targets import OUTPUT_TARGETS

_FEATURE_SPEC = {name: tf.io.FixedLenFeature([], tf.string if kind == "bytes" else tf.int64)
                 for name, kind in FEATURES.items()}
_TARGET_FEATURES = {"boundary": "boundary/png", "distance": "distance/png"}  # format 4 only
_SIZE_SPEC = {name: _FEATURE_SPEC[name] for name in ("image/height", "image/width", "source/name", "source/height",
                                                      "source/width")}
_MAX_SHUFFLE_BUFFER = 4096
# Shards read at the same time; more gains nothing once the reads keep the parse stage busy.
MAX_PARALLEL_SHARD_READS = 16


def read_examples(records_dir, split, targets=()):
    """One split's records, decoded: dicts of uint8 `image` [H,W,3] and `mask` [H,W,1] (values 0, 1),
    the source photo's `name` and its original `height` and `width`, and each of the instance `targets`
    named ("boundary": [H,W,1] values 0, 1; "distance": [H,W,1] 0..255 for 0..1; format 4 records only:
    an InputError for older ones). Shards are read in parallel.

    Squash records all have the manifest's image_size, and the shapes say so; scale records each
    have their own size (io.Scale(F) of the photo's), so H and W are None. A record whose size
    contradicts the manifest is an error naming its shard: an InputError for the first record of any
    shard, checked here; for any other, an InvalidArgumentError as it is read.
    """
    records_dir = Path(records_dir)
    manifest = load_manifest(records_dir)
    if split not in manifest["splits"]:
        raise InputError(f"{records_dir / MANIFEST}: no {split!r} split (has {sorted(manifest['splits'])})")
    shards = [str(records_dir / name) for name in manifest["splits"][split]["shards"]]
    compression = manifest.get("compression") or ""
    if targets and manifest["format_version"] < TARGETS_VERSION:
        raise InputError(f"{records_dir / MANIFEST}: records of format {manifest['format_version']} hold no "
                         f"{' or '.join(targets)} targets (format {TARGETS_VERSION} does); rebuild them: "
                         f"python -m tools.build_records --data {manifest['input']} --out {records_dir} --overwrite")
    _check_first_records(records_dir / MANIFEST, manifest, shards, compression)
    static = tuple(manifest["image_size"]) if manifest["mode"] == "squash" else (None, None)
    planes = ("mask", *targets)  # one-channel maps of the record's size
    spec = {name: feature for name, feature in _FEATURE_SPEC.items()
            if name not in _TARGET_FEATURES.values() or name in [_TARGET_FEATURES[t] for t in targets]}

    def parse(shard, serialized):
        features = tf.io.parse_single_example(serialized, spec)
        image = tf.io.decode_png(features["image/png"], channels=3)
        maps = {name: tf.io.decode_png(features[_TARGET_FEATURES.get(name, "mask/png")], channels=1) for name in planes}
        expected = _record_size_tensor(manifest, tf.stack([features["source/height"], features["source/width"]]))
        stated = tf.stack([features["image/height"], features["image/width"]])
        sizes = tf.stack([tf.shape(image, tf.int64)[:2], *(tf.shape(maps[name], tf.int64)[:2] for name in planes),
                          stated])
        check = tf.debugging.Assert(
            tf.reduce_all(sizes == expected),
            [shard, features["source/name"], f"image, {', '.join(planes)} and stated sizes", sizes,
             "but the manifest", f"({describe(manifest)}) makes it", expected],
        )
        with tf.control_dependencies([check]):
            return {
                "image": tf.ensure_shape(image, (*static, 3)),
                **{name: tf.ensure_shape(maps[name], (*static, 1)) for name in planes},
                "name": features["source/name"],
                "height": features["source/height"],
                "width": features["source/width"],
            }

    files = tf.data.Dataset.from_tensor_slices(shards)
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression).map(lambda record: (path, record)),
        cycle_length=min(len(shards), MAX_PARALLEL_SHARD_READS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    examples = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return examples.apply(tf.data.experimental.assert_cardinality(split_size(manifest, split)))


def make_dataset(records_dir, split, batch_size, training, seed=0, num_workers=1, crop=None, output="binary"):
    """Batches from one split's shards, as uint8 tensors.

    `output` (stoneseg.choices.OUTPUTS) says what the "masks" hold: "binary", the stone mask [B,H,W,1];
    "boundary" or "distance", the mask and that output's target [B,H,W,2] (stoneseg.targets).

    Without `crop` (squash records only): `(images [B,H,W,3], masks [B,H,W,C])`, the records as they are.
    With `crop` N (`train --crop N`): whole records, zero-padded on the bottom and right to the largest
    in the batch, and
    - training: `(images, masks, sizes)`, each record padded to at least N×N, `sizes` int32 [B, 2] its
      own (height, width); the train step draws a random N×N crop inside each (augment.RandomRecordCrop);
    - otherwise: `(images, masks, weights)`, padded to a multiple of the network's stride (32), with
      `weights` [B,H,W,1] 1 on record pixels and 0 on padding: Keras' sample_weight, so padding counts
      in neither the loss nor the metrics, and a validation score is over whole photos.

    Training: shuffled with `seed` (a new order each epoch), repeated forever, full batches only.
    Otherwise: one pass in record order, the last batch may be short. `batch_size` is the global
    batch: a `tf.distribute` strategy splits it across replicas, and shards the files across
    `num_workers` workers when there are at least that many shards.
    """
    manifest = load_manifest(records_dir)
    if crop is None and manifest["mode"] != "squash":
        raise InputError(f"{Path(records_dir) / MANIFEST}: {describe(manifest)} records differ in size, so they are "
                         "batched whole only with a crop size (python -m stoneseg.train --crop N)")
    planes = ("mask", *OUTPUT_TARGETS[output])
    dataset = read_examples(records_dir, split, OUTPUT_TARGETS[output]).map(
        lambda example: (example["image"], tf.concat([example[name] for name in planes], axis=-1))).cache()
    if training:
        buffer = min(split_size(manifest, split), _MAX_SHUFFLE_BUFFER)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    if crop is None:
        dataset = dataset.batch(batch_size, drop_remainder=training)
    elif training:
        dataset = dataset.map(lambda image, mask: _at_least(image, mask, crop), num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.padded_batch(batch_size, drop_remainder=True)
    else:
        dataset = dataset.map(lambda image, mask: (image, mask, tf.ones_like(mask[..., :1])))
        dataset = dataset.padded_batch(batch_size).map(_pad_to_stride, num_parallel_calls=tf.data.AUTOTUNE)
    num_shards = len(manifest["splits"][split]["shards"])
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_sharding_options(num_shards, num_workers))


def _at_least(image, mask, side):
    """Pad a record on the bottom and right to at least side×side; also return its own (height, width)."""
    size = tf.shape(image)[:2]
    padding = tf.maximum(side - size, 0)
    paddings = tf.stack([[0, padding[0]], [0, padding[1]], [0, 0]])
    return tf.pad(image, paddings), tf.pad(mask, paddings), size


def _pad_to_stride(images, masks, weights):
    """Pad a batch on the bottom and right to multiples of OUTPUT_STRIDE (weights 0 there)."""
    size = tf.shape(images)[1:3]
    padding = -size % OUTPUT_STRIDE
    paddings = tf.stack([[0, 0], [0, padding[0]], [0, padding[1]], [0, 0]])
    return tf.pad(images, paddings), tf.pad(masks, paddings), tf.pad(weights, paddings)


def _record_size_tensor(manifest, source):
    """records.record_size as int64 tensor ops on a [2] source (height, width): io.Scale's float64 arithmetic."""
    if manifest["mode"] == "squash":
        return tf.constant(manifest["image_size"], tf.int64)
    scaled = tf.math.ceil(tf.cast(source, tf.float64) * manifest["scale"] - 1e-9)
    return tf.maximum(tf.cast(scaled, tf.int64), 1)


def _check_first_records(manifest_path, manifest, shards, compression):
    """Raise an InputError naming the shard when a shard's first record contradicts the manifest (a folder
    holding shards of two builds, or a manifest edited by hand)."""
    for shard in shards:
        for record in tf.data.TFRecordDataset(shard, compression_type=compression).take(1):
            features = tf.io.parse_single_example(record, _SIZE_SPEC)
            size = (int(features["image/height"]), int(features["image/width"]))
            expected = record_size(manifest, (int(features["source/height"]), int(features["source/width"])))
            if size != expected:
                raise InputError(
                    f"{shard}: record of {features['source/name'].numpy().decode()} is {size[0]}x{size[1]}, but "
                    f"{manifest_path} describes {describe(manifest)} records, which make it {expected[0]}x{expected[1]}: "
                    "the folder mixes records of two builds; rebuild it with `python -m tools.build_records --overwrite`"
                )


def shard_by(num_shards, num_workers):
    """How a split is divided among workers: "file" when every worker gets a shard file, else "record"."""
    return "file" if num_shards >= num_workers else "record"


def _sharding_options(num_shards, num_workers):
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    by = shard_by(num_shards, num_workers)
    options.experimental_distribute.auto_shard_policy = policy.FILE if by == "file" else policy.DATA
    return options
