"""The on-device augmentation: masks stay binary and follow their image exactly."""

import keras
import numpy as np
import tensorflow as tf

from stoneseg.augment import SegmentationAugmentation


def blocky_batch(count=8, size=64, seed=0):
    """uint8 images whose red channel *is* the mask (×255), on 8×8 blocks, plus that mask."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, (count, size // 8, size // 8)).astype(np.uint8)
    masks = np.kron(blocks, np.ones((8, 8), np.uint8))[..., None]
    noise = rng.integers(0, 256, masks.shape, dtype=np.uint8)
    images = np.concatenate([masks * 255, noise, np.zeros_like(masks)], axis=-1)
    return images, masks


def augment(layer, images, masks):
    augmented = tf.function(lambda x, y: layer(x, y, training=True))(images, masks)
    return [keras.ops.convert_to_numpy(t) for t in augmented]


def test_masks_stay_binary_and_shapes_and_dtypes_hold():
    images, masks = blocky_batch()
    layer = SegmentationAugmentation(seed=1)
    for _ in range(5):
        out_images, out_masks = augment(layer, images, masks)
        assert out_images.shape == images.shape and out_images.dtype == np.float32
        assert out_masks.shape == masks.shape and out_masks.dtype == np.float32
        assert set(np.unique(out_masks)) <= {0.0, 1.0}
        assert out_images.min() >= -1e-3 and out_images.max() <= 255.0 + 1e-3  # bilinear rounding


def test_image_and_mask_get_the_same_transform():
    images, masks = blocky_batch(count=16)
    layer = SegmentationAugmentation(seed=3)
    changed = 0
    for _ in range(4):
        out_images, out_masks = augment(layer, images, masks)
        # The mask made from the image must still be the image's red channel: nearest vs bilinear
        # resampling may disagree only on a thin rim along block edges.
        from_image = out_images[..., 0] > 127.5
        agreement = (from_image == (out_masks[..., 0] > 0.5)).mean(axis=(1, 2))
        assert agreement.min() > 0.98, agreement
        changed += int(np.sum(np.any(out_masks != masks, axis=(1, 2, 3))))
    assert changed > 0.6 * 4 * 16  # 7 of 8 images get at least one transform


def test_same_seed_same_draws_and_draws_change_every_step():
    images, masks = blocky_batch()
    first = augment(SegmentationAugmentation(seed=5), images, masks)
    again = augment(SegmentationAugmentation(seed=5), images, masks)
    np.testing.assert_array_equal(first[1], again[1])
    layer = SegmentationAugmentation(seed=5)
    step1, step2 = augment(layer, images, masks), augment(layer, images, masks)
    assert not np.array_equal(step1[1], step2[1])


def test_flips_and_rotation_follow_the_prototype_probabilities():
    images, masks = blocky_batch(count=64)
    layer = SegmentationAugmentation(seed=11, rotation_probability=0.0)
    _, out_masks = augment(layer, images, masks)
    # Without rotation every output is one of the four flips of its input, each about a quarter.
    kinds = []
    for original, out in zip(masks[..., 0], out_masks[..., 0]):
        flips = [original, original[:, ::-1], original[::-1, :], original[::-1, ::-1]]
        kinds.append(next(i for i, flipped in enumerate(flips) if np.array_equal(flipped, out)))
    counts = np.bincount(kinds, minlength=4)
    assert counts.min() >= 6, counts


def test_no_augmentation_outside_training():
    images, masks = blocky_batch()
    out_images, out_masks = SegmentationAugmentation(seed=1)(images, masks, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out_masks), masks)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out_images), images)


def test_rotation_is_bounded_by_30_degrees():
    # A centred bar rotated by at most 30° keeps its centre pixel and never turns past vertical.
    size = 64
    mask = np.zeros((1, size, size, 1), np.uint8)
    mask[:, size // 2 - 1 : size // 2 + 1, 8:-8] = 1  # horizontal bar
    images = np.repeat(mask * 255, 3, axis=-1)
    layer = SegmentationAugmentation(rotation_probability=1.0, seed=2)
    for _ in range(10):
        _, out = augment(layer, np.repeat(images, 4, 0), np.repeat(mask, 4, 0))
        ys, xs = np.nonzero(out[0, ..., 0])
        slope = abs(np.polyfit(xs, ys, 1)[0])
        assert slope <= np.tan(np.radians(30.0)) + 0.1
