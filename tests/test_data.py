"""The tf.data pipeline over the shards: shapes, dtypes, values, order and splits."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from stoneseg.cli import InputError
from stoneseg.data import load_manifest, make_dataset, read_examples

AutoShardPolicy = tf.data.experimental.AutoShardPolicy


def records_read_directly(records, split):
    """(name, image) of every record of `split`, read shard by shard in the manifest's order with plain
    TFRecordDataset, then taken one from each shard in turn: the order the pipeline promises."""
    features = {"source/name": tf.io.FixedLenFeature([], tf.string), "image/png": tf.io.FixedLenFeature([], tf.string)}
    shards = []
    for shard in load_manifest(records)["splits"][split]["shards"]:
        parsed = [tf.io.parse_single_example(serialized, features) for serialized in tf.data.TFRecordDataset(
            str(records / shard))]
        shards.append([(p["source/name"].numpy().decode(), tf.io.decode_png(p["image/png"]).numpy()) for p in parsed])
    in_turn = [shard[index] for index in range(max(map(len, shards))) for shard in shards if index < len(shard)]
    return [name for name, _ in in_turn], np.stack([image for _, image in in_turn])


def test_train_batches_are_full_uint8_and_binary(tiny_records):
    batches = list(make_dataset(tiny_records, "train", batch_size=4, training=True, seed=0).take(5))
    assert len(batches) == 5  # repeats forever
    for images, masks in batches:
        assert images.shape == (4, 64, 64, 3) and images.dtype.name == "uint8"
        assert masks.shape == (4, 64, 64, 1) and masks.dtype.name == "uint8"
        assert set(np.unique(masks.numpy())) <= {0, 1}
    assert len({np.asarray(images).tobytes() for images, _ in batches}) > 1


def test_validation_is_one_pass_in_order_with_a_short_last_batch(tiny_records):
    manifest = load_manifest(tiny_records)
    count = manifest["splits"]["val"]["examples"]
    dataset = make_dataset(tiny_records, "val", batch_size=count + 1, training=False)
    batches = list(dataset)
    assert len(batches) == 1 and batches[0][0].shape[0] == count
    assert int(dataset.cardinality()) == 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_without_training_the_records_come_in_shard_order(tiny_records, split):
    names, images = records_read_directly(tiny_records, split)
    assert [name.numpy().decode() for name in read_examples(tiny_records, split).map(lambda e: e["name"])] == names
    batches = list(make_dataset(tiny_records, split, batch_size=3, training=False))
    np.testing.assert_array_equal(np.concatenate([batch_images for batch_images, _ in batches]), images)


def test_a_seed_fixes_the_shuffle_and_epochs_reshuffle(tiny_records):
    def first_batches(seed):
        dataset = make_dataset(tiny_records, "train", batch_size=8, training=True, seed=seed)
        return [np.asarray(images).tobytes() for images, _ in dataset.take(2)]

    assert first_batches(1) == first_batches(1)
    assert first_batches(1) != first_batches(2)
    epoch1, epoch2 = first_batches(1)  # 8 train photos: one batch is one epoch
    assert epoch1 != epoch2  # the same photos in a new order


def test_every_train_photo_comes_through_once_per_epoch_unaugmented(tiny_records):
    """Augmentation belongs to the train step: the pipeline hands over each record's photo as stored."""
    train = load_manifest(tiny_records)["splits"]["train"]
    images, _ = next(iter(make_dataset(tiny_records, "train", batch_size=train["examples"], training=True)))
    _, stored = records_read_directly(tiny_records, "train")
    assert sorted(image.tobytes() for image in np.asarray(images)) == sorted(image.tobytes() for image in stored)


def test_missing_split_and_manifest_errors_name_the_file(tiny_records, tmp_path):
    with pytest.raises(InputError, match="no 'test' split"):
        make_dataset(tiny_records, "test", batch_size=2, training=False)
    with pytest.raises(InputError, match="manifest.json: no manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("not JSON")
    with pytest.raises(InputError, match="manifest.json: not a records manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(InputError, match="format version 99"):
        load_manifest(tmp_path)


def test_workers_get_disjoint_shards_that_cover_the_split(tiny_records):
    # TensorFlow's own auto-shard rewrite, as tf.distribute applies it on each worker.
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset

    train = load_manifest(tiny_records)["splits"]["train"]
    assert len(train["shards"]) == 8
    for workers in (2, 8):
        seen = []
        for index in range(workers):
            dataset = make_dataset(tiny_records, "train", batch_size=1, training=False, num_workers=workers)
            # By file, down to as many shards as workers: with one record per shard, dealing out records
            # would give each worker the same photos, but every worker would read every shard.
            assert dataset.options().experimental_distribute.auto_shard_policy == AutoShardPolicy.FILE
            seen.append({np.asarray(image).tobytes() for image, _ in _AutoShardDataset(dataset, workers, index, workers)})
        assert sum(len(photos) for photos in seen) == len(set().union(*seen)) == train["examples"]
        assert all(photos for photos in seen)


# ----------------------------------------------------------------------------- two modes, whole-record batches
@pytest.fixture(scope="module")
def scale_records(tiny_photos, tmp_path_factory):
    """tiny_photos (96x128) at scale 0.5: 48x64 records."""
    from tools.build_records import main as build_records

    out = tmp_path_factory.mktemp("scale") / "records"
    assert build_records(["--data", str(tiny_photos), "--out", str(out), "--scale", "0.5", "--workers", "1"]) == 0
    return out


def copy_records(source, target, **manifest_changes):
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(manifest_changes)
    manifest = {key: value for key, value in manifest.items() if value is not DROP}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


DROP = object()


def test_scale_records_read_at_their_own_size(scale_records):
    examples = list(read_examples(scale_records, "train").as_numpy_iterator())
    assert len(examples) == 8
    for example in examples:
        assert (example["height"], example["width"]) == (96, 128)  # the source photo's size
        assert example["image"].shape == (48, 64, 3) and example["mask"].shape == (48, 64, 1)
        assert example["image"].dtype == np.uint8 and set(np.unique(example["mask"])) <= {0, 1}
    assert read_examples(scale_records, "train").element_spec["image"].shape.as_list() == [None, None, 3]
    with pytest.raises(InputError, match="differ in size, so they are batched whole only with a crop size"):
        make_dataset(scale_records, "train", batch_size=2, training=True)


def test_a_version_2_manifest_reads_as_squash(tiny_records, tmp_path):
    old = copy_records(tiny_records, tmp_path / "old", format_version=2, mode=DROP, scale=DROP)
    manifest = load_manifest(old)
    assert (manifest["mode"], manifest["scale"], manifest["image_size"]) == ("squash", None, [64, 64])
    images, _ = next(iter(make_dataset(old, "train", batch_size=2, training=True)))
    assert images.shape == (2, 64, 64, 3)


@pytest.mark.parametrize("changes", [
    {"mode": "scale"},  # a scale manifest must have a scale and no image_size
    {"scale": 0.5},
    {"mode": "tiles"},
    {"mode": "scale", "scale": 1.5, "image_size": None},
])
def test_a_manifest_that_contradicts_itself_is_refused(tiny_records, tmp_path, changes):
    with pytest.raises(InputError, match="contradictory manifest"):
        load_manifest(copy_records(tiny_records, tmp_path / "bad", **changes))


def test_records_of_two_builds_in_one_folder_are_an_error_naming_the_shard(tiny_records, scale_records, tmp_path):
    # A scale manifest over squash shards: every shard's first record is checked before any training.
    mixed = copy_records(tiny_records, tmp_path / "mixed", mode="scale", scale=0.5, image_size=None)
    with pytest.raises(InputError, match=r"train-00000-of-00008.tfrecord: record of .* is 64x64, but .* describes "
                                         r"scale 0.5 records, which make it 48x64: the folder mixes records of two builds"):
        make_dataset(mixed, "train", batch_size=2, training=True, crop=32)
    # A shard whose first record fits but a later one does not: caught as that record is read.
    spliced = copy_records(scale_records, tmp_path / "spliced")
    shard = spliced / load_manifest(spliced)["splits"]["val"]["shards"][0]
    squash_record = next(iter(tf.data.TFRecordDataset(str(tiny_records / load_manifest(tiny_records)["splits"]["val"]["shards"][0]))))
    scale_record = next(iter(tf.data.TFRecordDataset(str(shard))))
    with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(scale_record.numpy())
        writer.write(squash_record.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="val-00000-of-00002.tfrecord"):
        list(read_examples(spliced, "val").take(3))


def test_crop_batches_carry_whole_records_padded_with_their_sizes(scale_records):
    records = {example["image"].tobytes(): example for example in read_examples(scale_records, "train").as_numpy_iterator()}
    images, masks, sizes = next(iter(make_dataset(scale_records, "train", batch_size=4, training=True, crop=96)))
    assert images.shape == (4, 96, 96, 3) and masks.shape == (4, 96, 96, 1) and sizes.dtype == tf.int32
    for image, mask, (height, width) in zip(np.asarray(images), np.asarray(masks), np.asarray(sizes)):
        assert (height, width) == (48, 64)
        record = records[image[:height, :width].tobytes()]  # the record itself, in the top-left corner
        np.testing.assert_array_equal(mask[:height, :width], record["mask"])
        assert not image[height:].any() and not image[:, width:].any() and not mask[height:].any()
    # Records larger than the crop stay whole: the crop happens in the train step.
    images, _, _ = next(iter(make_dataset(scale_records, "train", batch_size=2, training=True, crop=32)))
    assert images.shape == (2, 48, 64, 3)


def test_validation_batches_pad_whole_records_to_32_and_weigh_the_padding_0(scale_records):
    records = list(read_examples(scale_records, "val").as_numpy_iterator())
    batches = list(make_dataset(scale_records, "val", batch_size=4, training=False, crop=32))
    assert len(batches) == 1
    images, masks, weights = (np.asarray(tensor) for tensor in batches[0])
    assert images.shape == (2, 64, 64, 3) and weights.shape == (2, 64, 64, 1)
    for record, image, mask, weight in zip(records, images, masks, weights):
        np.testing.assert_array_equal(image[:48, :64], record["image"])
        np.testing.assert_array_equal(mask[:48, :64], record["mask"])
        assert weight[:48].all() and not weight[48:].any() and not image[48:].any()


def test_with_fewer_shards_than_workers_each_worker_gets_its_own_records(tiny_photos, tmp_path):
    """3 train shards, 4 workers: sharding by file would leave a worker without data, so the records
    are dealt out instead, each to one worker."""
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset
    from tools.build_records import main as build_records

    records = tmp_path / "records"
    assert build_records(["--data", str(tiny_photos), "--out", str(records), "--size", "32", "--shards", "3",
                          "--workers", "1"]) == 0
    train = load_manifest(records)["splits"]["train"]
    assert (len(train["shards"]), train["examples"]) == (3, 8)
    seen = []
    for index in range(4):
        dataset = make_dataset(records, "train", batch_size=1, training=False, num_workers=4)
        assert dataset.options().experimental_distribute.auto_shard_policy == AutoShardPolicy.DATA
        seen.append([np.asarray(image).tobytes() for image, _ in _AutoShardDataset(dataset, 4, index, 4)])
    assert [len(photos) for photos in seen] == [2, 2, 2, 2]
    assert len(set().union(*seen)) == 8
