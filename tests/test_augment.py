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


def asymmetric_batch(count, size=64):
    """Images whose red channel is an L-shaped mark (no symmetry a flip or rotation could hide) and that
    mark as the mask; the other channels are noise, as in a photo."""
    mask = np.zeros((size, size), np.uint8)
    mask[12:44, 12:22] = 1  # the L's upright
    mask[34:44, 22:40] = 1  # its foot
    masks = np.repeat(mask[None, ..., None], count, axis=0)
    noise = np.random.default_rng(0).integers(0, 256, masks.shape, dtype=np.uint8)
    images = np.concatenate([masks * 255, noise, np.zeros_like(masks)], axis=-1)
    return images, masks


def flips(array):
    """The four flips of an (H, W) array: none, left-right, up-down, both."""
    return [array, array[:, ::-1], array[::-1, :], array[::-1, ::-1]]


def which_flip(original, out):
    """Index of the flip of `original` that `out` equals exactly, or None (it was rotated)."""
    return next((index for index, flipped in enumerate(flips(original)) if np.array_equal(flipped, out)), None)


def test_image_and_mask_get_the_same_transform():
    """Rotation always on: the mark ends up in the same place in the image's red channel and in the mask
    (nearest vs bilinear resampling may differ only on a thin rim), and it has really been rotated."""
    images, masks = asymmetric_batch(count=32)
    layer = SegmentationAugmentation(rotation_probability=1.0, seed=3)
    for _ in range(2):
        out_images, out_masks = augment(layer, images, masks)
        from_image = out_images[..., 0] > 127.5
        mask = out_masks[..., 0] > 0.5
        overlap = (from_image & mask).sum(axis=(1, 2)) / (from_image | mask).sum(axis=(1, 2))
        assert overlap.min() > 0.9, overlap
        moved = [which_flip(masks[0, ..., 0], out.astype(np.uint8)) is None for out in out_masks[..., 0]]
        assert np.mean(moved) > 0.8, np.mean(moved)  # only angles within about a degree move no pixel


def test_rotation_happens_at_the_stated_rate_over_many_draws():
    """p = 0.5 by default: an output that is no exact flip of its input was rotated. Over 256 draws the
    share rotated is 0.5 less the few angles too small to move a pixel (binomial sd 0.03)."""
    images, masks = blocky_batch(count=64)
    layer = SegmentationAugmentation(seed=7)
    rotated = []
    for _ in range(4):
        _, out_masks = augment(layer, images, masks)
        rotated += [which_flip(original, out.astype(np.uint8)) is None
                    for original, out in zip(masks[..., 0], out_masks[..., 0])]
    assert 0.38 < np.mean(rotated) < 0.6, np.mean(rotated)


def test_same_seed_same_draws_and_draws_change_every_step():
    images, masks = blocky_batch()
    first = augment(SegmentationAugmentation(seed=5), images, masks)
    again = augment(SegmentationAugmentation(seed=5), images, masks)
    np.testing.assert_array_equal(first[1], again[1])
    layer = SegmentationAugmentation(seed=5)
    step1, step2 = augment(layer, images, masks), augment(layer, images, masks)
    assert not np.array_equal(step1[1], step2[1])


def test_flips_follow_the_prototype_probabilities_and_move_image_and_mask_alike():
    """Without rotation every output is one of the four flips of its input, each about a quarter of the
    time, and the image is flipped exactly as its mask is."""
    images, masks = blocky_batch(count=64)
    layer = SegmentationAugmentation(seed=11, rotation_probability=0.0)
    out_images, out_masks = augment(layer, images, masks)
    kinds = []
    for image, mask, out_image, out_mask in zip(images, masks[..., 0], out_images, out_masks[..., 0]):
        kind = which_flip(mask, out_mask.astype(np.uint8))
        assert kind is not None
        np.testing.assert_array_equal(out_image, flips(image)[kind])
        kinds.append(kind)
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
