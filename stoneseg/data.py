"""Shards → batches: the tf.data input pipeline over the records listed in `manifest.json`.

Photos were decoded and resized once by `tools.build_records`; here each record's PNGs are decoded
once in parallel and cached as uint8, so the per-step path is only shuffle, batch and prefetch.
Augmentation is not done here: it runs inside the train step on the training device.
"""

from pathlib import Path

import tensorflow as tf

from stoneseg.cli import InputError
from stoneseg.records import FEATURES, MANIFEST, load_manifest, split_size

_FEATURE_SPEC = {name: tf.io.FixedLenFeature([], tf.string if kind == "bytes" else tf.int64)
                 for name, kind in FEATURES.items()}
_MAX_SHUFFLE_BUFFER = 4096
# Shards read at the same time; more gains nothing once the reads keep the parse stage busy.
MAX_PARALLEL_SHARD_READS = 16


def read_examples(records_dir, split):
    """One split's records, decoded: dicts of uint8 `image` [H,W,3] and `mask` [H,W,1] (values 0, 1),
    the source photo's `name` and its original `height` and `width`. Shards are read in parallel."""
    records_dir = Path(records_dir)
    manifest = load_manifest(records_dir)
    if split not in manifest["splits"]:
        raise InputError(f"{records_dir / MANIFEST}: no {split!r} split (has {sorted(manifest['splits'])})")
    shards = [str(records_dir / name) for name in manifest["splits"][split]["shards"]]
    height, width = manifest["image_size"]

    def parse(serialized):
        features = tf.io.parse_single_example(serialized, _FEATURE_SPEC)
        return {
            "image": tf.ensure_shape(tf.io.decode_png(features["image/png"], channels=3), (height, width, 3)),
            "mask": tf.ensure_shape(tf.io.decode_png(features["mask/png"], channels=1), (height, width, 1)),
            "name": features["source/name"],
            "height": features["source/height"],
            "width": features["source/width"],
        }

    files = tf.data.Dataset.from_tensor_slices(shards)
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=manifest.get("compression") or ""),
        cycle_length=min(len(shards), MAX_PARALLEL_SHARD_READS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    examples = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return examples.apply(tf.data.experimental.assert_cardinality(split_size(manifest, split)))


def make_dataset(records_dir, split, batch_size, training, seed=0, num_workers=1):
    """Batches of `(uint8 image [B,H,W,3], uint8 mask [B,H,W,1])` from one split's shards.

    Training: shuffled with `seed` (a new order each epoch), repeated forever, full batches only.
    Otherwise: one pass in record order, the last batch may be short. `batch_size` is the global
    batch: a `tf.distribute` strategy splits it across replicas, and shards the files across
    `num_workers` workers when there are at least that many shards.
    """
    manifest = load_manifest(records_dir)
    dataset = read_examples(records_dir, split).map(lambda example: (example["image"], example["mask"])).cache()
    if training:
        buffer = min(split_size(manifest, split), _MAX_SHUFFLE_BUFFER)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    num_shards = len(manifest["splits"][split]["shards"])
    return dataset.with_options(_sharding_options(num_shards, num_workers))


def shard_by(num_shards, num_workers):
    """How a split is divided among workers: "file" when every worker gets a shard file, else "record"."""
    return "file" if num_shards >= num_workers else "record"


def _sharding_options(num_shards, num_workers):
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy
    by = shard_by(num_shards, num_workers)
    options.experimental_distribute.auto_shard_policy = policy.FILE if by == "file" else policy.DATA
    return options
