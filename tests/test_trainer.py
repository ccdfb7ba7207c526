"""The train step with `--crop`: padding never counts in the loss or the metrics, in training or in
validation, and a network trained on crops of squashed records is saved for the squashed size."""

import math

import keras
import numpy as np
import pytest

from stoneseg.augment import RandomRecordCrop, SegmentationAugmentation
from stoneseg.data import make_dataset, read_examples
from stoneseg.metrics import make_loss, training_metrics
from stoneseg.model import build_unet
from stoneseg.trainer import SegmentationTrainer

CROP = 64
PADDING_PROBABILITY = 0.9  # what the network says on black padding, whose mask is 0: costly if it counted


@pytest.fixture(scope="module")
def small_scale_records(tiny_photos, tmp_path_factory):
    """tiny_photos (96x128) at scale 0.3: 29x39 records, every one smaller than the 64x64 crop."""
    from tools.build_records import main as build_records

    out = tmp_path_factory.mktemp("scale") / "records"
    assert build_records(["--data", str(tiny_photos), "--out", str(out), "--scale", "0.3", "--workers", "1"]) == 0
    return out


def pixelwise_network():
    """A 1x1 conv: its prediction at a pixel depends on that pixel alone, so padding cannot change the
    predictions on a record's pixels, and on black padding it is PADDING_PROBABILITY."""
    images = keras.Input((None, None, 3))
    logit = math.log(PADDING_PROBABILITY / (1 - PADDING_PROBABILITY))
    probabilities = keras.layers.Conv2D(
        1, 1, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(stddev=0.02, seed=0),
        bias_initializer=keras.initializers.Constant(logit),
    )(images)
    return keras.Model(images, probabilities)


def trainer_for(loss):
    # No rotation, so no resampling: the flips only move pixels, which leaves every sum unchanged.
    trainer = SegmentationTrainer(pixelwise_network(), SegmentationAugmentation(rotation_probability=0.0, seed=0),
                                  crop=RandomRecordCrop(CROP, seed=0))
    trainer.compile(optimizer=keras.optimizers.SGD(0.0), loss=make_loss(loss), metrics=training_metrics())
    return trainer


def expected_scores(network, records, loss):
    """Loss and IoU of `network` on the records themselves, unpadded, computed here with NumPy."""
    bce_sum = pixels = 0.0
    per_record, counts = [], np.zeros(3)  # true positives, false positives, false negatives
    for image, mask in records:
        probability = np.clip(np.asarray(network(image[None].astype(np.float32)))[0, ..., 0], 1e-7, 1 - 1e-7)
        truth = mask[..., 0].astype(np.float64)
        bce = -(truth * np.log(probability) + (1 - truth) * np.log(1 - probability))
        dice = 1 - 2 * np.sum(truth * probability) / (truth.sum() + probability.sum() + 1e-7)
        bce_sum, pixels = bce_sum + bce.sum(), pixels + bce.size
        per_record.append(bce.mean() + dice)
        predicted = probability >= 0.5
        counts += [np.sum(predicted & (truth == 1)), np.sum(predicted & (truth == 0)), np.sum(~predicted & (truth == 1))]
    expected_loss = bce_sum / pixels if loss == "bce" else np.mean(per_record)
    return expected_loss, counts[0] / counts.sum()


@pytest.mark.parametrize("loss", ["bce", "bce_dice"])
def test_padding_counts_in_neither_loss_nor_iou_when_training(small_scale_records, loss):
    import tensorflow as tf

    batch = next(iter(make_dataset(small_scale_records, "train", 4, training=True, seed=0, crop=CROP)))
    images, masks, sizes = (np.asarray(tensor) for tensor in batch)
    assert images.shape[1:3] == (CROP, CROP) and (sizes < CROP).all()  # every record padded
    records = [(image[:height, :width], mask[:height, :width]) for image, mask, (height, width) in zip(images, masks, sizes)]
    trainer = trainer_for(loss)
    logs = trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=1, epochs=1, verbose=0,
                       shuffle=False).history
    expected_loss, expected_iou = expected_scores(trainer.network, records, loss)
    assert logs["loss"][0] == pytest.approx(expected_loss, rel=1e-4)
    assert logs["iou"][0] == pytest.approx(expected_iou, rel=1e-5) and expected_iou > 0
    # Not vacuous: had the padding counted, both would be far off.
    padded_loss = float(make_loss(loss)(masks, trainer.network(images.astype(np.float32))))
    padded_iou = keras.metrics.BinaryIoU(target_class_ids=[1])(masks, trainer.network(images.astype(np.float32)))
    assert abs(padded_loss - expected_loss) > 0.1 * expected_loss and float(padded_iou) < 0.5 * expected_iou


@pytest.mark.parametrize("loss", ["bce", "bce_dice"])
def test_validation_scores_whole_records_without_their_padding(small_scale_records, loss):
    records = [(example["image"], example["mask"]) for example in read_examples(small_scale_records, "val").as_numpy_iterator()]
    assert len(records) == 2
    val = make_dataset(small_scale_records, "val", 2, training=False, crop=CROP)
    images, _, weights = next(iter(val))
    assert images.shape[1:3] == (32, 64) and np.asarray(weights).sum() == sum(mask.size for _, mask in records)
    trainer = trainer_for(loss)
    scores = trainer.evaluate(val, return_dict=True, verbose=0)
    expected_loss, expected_iou = expected_scores(trainer.network, records, loss)
    assert scores["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert scores["iou"] == pytest.approx(expected_iou, rel=1e-5)


def test_a_network_trained_on_crops_of_squashed_records_is_saved_for_their_size(tmp_path):
    network = build_unet((None, None, 3))
    trainer = SegmentationTrainer(network, SegmentationAugmentation(seed=0), crop=RandomRecordCrop(32),
                                  saved_input_shape=(64, 96, 3))
    trainer.save(tmp_path / "best.keras")
    saved = keras.models.load_model(tmp_path / "best.keras", safe_mode=True)
    assert saved.input_shape == (None, 64, 96, 3) and network.input_shape == (None, None, None, 3)
    photo = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3)).astype(np.uint8)
    np.testing.assert_allclose(saved.predict(photo, verbose=0), network.predict(photo, verbose=0), atol=1e-6)
