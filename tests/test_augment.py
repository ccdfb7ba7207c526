"""The on-device augmentation: masks stay binary and follow their image exactly."""

import keras
import numpy as np
import tensorflow as tf

from stoneseg.augment import RandomRecordCrop, SegmentationAugmentation


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


# ----------------------------------------------------------------------------- RandomRecordCrop
def position_batch(sizes, canvas):
    """Zero-padded records whose pixels name their own place: red = row, green = column, blue = 1 + the
    record's index; the mask is a checkerboard of row + column. Padding is 0 everywhere."""
    images = np.zeros((len(sizes), *canvas, 3), np.uint8)
    masks = np.zeros((len(sizes), *canvas, 1), np.uint8)
    for index, (height, width) in enumerate(sizes):
        rows, cols = np.mgrid[:height, :width]
        images[index, :height, :width] = np.stack([rows, cols, np.full_like(rows, index + 1)], axis=-1)
        masks[index, :height, :width, 0] = (rows + cols) % 2
    return images, masks, np.array(sizes, np.int32)


def test_crops_are_one_window_of_the_same_record_in_image_and_mask():
    sizes = [(100, 90), (70, 100), (64, 64), (40, 50)]
    images, masks, sizes_array = position_batch(sizes, (100, 100))
    crop = RandomRecordCrop(64, seed=0)
    corners = {index: set() for index in range(len(sizes))}
    for _ in range(20):
        out_images, out_masks, weights = (np.asarray(t) for t in crop(images, masks, sizes_array))
        assert out_images.shape == (4, 64, 64, 3) and out_images.dtype == np.uint8
        assert out_masks.shape == (4, 64, 64, 1) and weights.shape == (4, 64, 64, 1) and weights.dtype == np.float32
        for index, (height, width) in enumerate(sizes):
            image, mask, weight = out_images[index], out_masks[index, ..., 0], weights[index, ..., 0]
            top, left = int(image[0, 0, 0]), int(image[0, 0, 1])
            corners[index].add((top, left))
            valid = (top + np.arange(64)[:, None] < height) & (left + np.arange(64)[None, :] < width)
            np.testing.assert_array_equal(weight, valid)  # 1 exactly on the record's pixels
            rows, cols = np.mgrid[top:top + 64, left:left + 64]
            # One contiguous window of this record, the same in image and mask; zeros past its edge.
            np.testing.assert_array_equal(image[..., 0], np.where(valid, rows, 0))
            np.testing.assert_array_equal(image[..., 1], np.where(valid, cols, 0))
            np.testing.assert_array_equal(image[..., 2], np.where(valid, index + 1, 0))
            np.testing.assert_array_equal(mask, np.where(valid, (rows + cols) % 2, 0))
            assert 0 <= top <= max(height - 64, 0) and 0 <= left <= max(width - 64, 0)
    assert corners[2] == {(0, 0)} and corners[3] == {(0, 0)}  # not larger than the window: it starts at 0
    assert len(corners[0]) > 10 and len({left for _, left in corners[1]}) > 10  # drawn fresh every call


def test_crop_corners_reach_both_ends_and_a_seed_repeats_them():
    images, masks, sizes = position_batch([(66, 67)] * 8, (66, 67))
    def corners(crop, calls=30):
        return [tuple(np.asarray(crop(images, masks, sizes)[0])[:, 0, 0, :2].ravel()) for _ in range(calls)]
    drawn = corners(RandomRecordCrop(64, seed=5))
    seen = {(top, left) for call in drawn for top, left in zip(call[::2], call[1::2])}
    assert {top for top, _ in seen} == {0, 1, 2} and {left for _, left in seen} == {0, 1, 2, 3}
    assert corners(RandomRecordCrop(64, seed=5)) == drawn
