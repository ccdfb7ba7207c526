"""The prototype's rotate/flip augmentation, and the random crop of `--crop`, applied on the training
device to images and every target alike.

Built from core Keras 3 preprocessing layers, which transform an `{"images", "segmentation_masks"}`
batch with one draw per image and resample masks nearest, so masks stay exactly {0, 1}. Targets that
must be resampled bilinearly (the normalised distance of `train --output distance`) ride along as extra
image channels, so the one draw moves them exactly as it moves the photo. The crop is our own
(`RandomRecordCrop`): Keras' RandomCrop draws one window per batch and knows nothing of padding.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="stoneseg")
class SegmentationAugmentation(keras.layers.Layer):
    """Rotation up to ±`max_rotation_degrees` with probability `rotation_probability`, then a
    horizontal and a vertical flip, each with p = 0.5; drawn fresh for every image at every call.

    `call(images, masks)` returns float32 `(images, masks)`, the masks [B,H,W,C] (any number of class
    maps and weights) resampled nearest; `call(images, masks, smooth)` returns `(images, masks, smooth)`,
    `smooth` [B,H,W,C'] resampled bilinearly like the images. With `training=False` they come back
    unchanged, so validation and evaluation never see augmentation.
    """

    def __init__(self, max_rotation_degrees=30.0, rotation_probability=0.5, seed=None, **kwargs):
        # float32 even under a mixed-precision policy: 0-255 pixels and masks are not rounded.
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.max_rotation_degrees = max_rotation_degrees
        self.rotation_probability = rotation_probability
        self.seed = seed
        self.rotate = keras.layers.RandomRotation(
            max_rotation_degrees / 360.0, fill_mode="reflect", seed=_offset(seed, 1), dtype="float32"
        )
        self.flip_horizontal = keras.layers.RandomFlip("horizontal", seed=_offset(seed, 2), dtype="float32")
        self.flip_vertical = keras.layers.RandomFlip("vertical", seed=_offset(seed, 3), dtype="float32")
        self.rotation_seed = keras.random.SeedGenerator(seed)
        # RandomRotation's image transform has no XLA kernel on TensorFlow.
        self.supports_jit = False

    def build(self, input_shape):
        for layer in (self.rotate, self.flip_horizontal, self.flip_vertical):
            layer.build(input_shape)

    def call(self, images, masks, smooth=None, training=True):
        images = ops.cast(images, "float32")
        masks = ops.cast(masks, "float32")
        colours = ops.shape(images)[-1]
        if smooth is not None:
            images = ops.concatenate([images, ops.cast(smooth, "float32")], axis=-1)
        if training:
            images, masks = self._transform(images, masks)
        if smooth is None:
            return images, masks
        return images[..., :colours], masks, images[..., colours:]

    def _transform(self, images, masks):
        batch = {"images": images, "segmentation_masks": masks}
        rotated = self.rotate(dict(batch), training=True)
        batch_size = ops.shape(images)[0]
        rotate_this = keras.random.uniform((batch_size, 1, 1, 1), seed=self.rotation_seed)
        rotate_this = rotate_this < self.rotation_probability
        batch = {key: ops.where(rotate_this, rotated[key], batch[key]) for key in batch}
        batch = self.flip_horizontal(batch, training=True)
        batch = self.flip_vertical(batch, training=True)
        return batch["images"], batch["segmentation_masks"]

    def get_config(self):
        config = super().get_config()
        config.update(
            max_rotation_degrees=self.max_rotation_degrees,
            rotation_probability=self.rotation_probability,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="stoneseg")
class RandomRecordCrop(keras.layers.Layer):
    """A random `size`×`size` window of each record in a batch of zero-padded records, drawn fresh for
    every record at every call; the image and its mask get the same window.

    `call(images, masks, sizes)`: `images` [B,H,W,3] and `masks` [B,H,W,1] hold records padded on the
    bottom and right to at least size×size (stoneseg.data.make_dataset with `crop`), `sizes` [B, 2]
    each record's own (height, width). The window's top-left corner is uniform over the positions
    that keep it inside the record; along a side where the record is smaller than `size` it is 0, and
    the window runs past the record into padding. Returns `(images, masks, weights)`, size×size, in
    the input dtypes; `weights` float32 [B,size,size,1] is 1 on the record's pixels and 0 on padding.
    """

    def __init__(self, size, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.seed = seed
        # Offsets 0-3 are SegmentationAugmentation's: one --seed drives both without repeating a stream.
        self.corner_seed = keras.random.SeedGenerator(_offset(seed, 4))

    def call(self, images, masks, sizes):
        sizes = ops.cast(sizes, "int32")
        positions = ops.maximum(sizes - self.size, 0) + 1  # top-left corners that keep the window inside
        draws = keras.random.uniform(ops.shape(sizes), seed=self.corner_seed)
        corners = ops.minimum(ops.cast(draws * ops.cast(positions, "float32"), "int32"), positions - 1)
        steps = ops.arange(self.size, dtype="int32")
        rows = corners[:, :1] + steps  # [B, size]
        cols = corners[:, 1:] + steps
        weights = ops.logical_and(rows[:, :, None] < sizes[:, :1, None], cols[:, None, :] < sizes[:, 1:, None])
        # One gather of exactly the window's pixels from the flattened batch (take_along_axis would
        # broadcast and transpose the whole padded batch twice).
        batch, height, width = ops.shape(images)[0], ops.shape(images)[1], ops.shape(images)[2]
        first_row = ops.arange(batch, dtype="int32")[:, None, None] * height
        pixels = (first_row + rows[:, :, None]) * width + cols[:, None, :]  # [B, size, size]
        images = ops.take(ops.reshape(images, (-1, ops.shape(images)[-1])), pixels, axis=0)
        masks = ops.take(ops.reshape(masks, (-1, ops.shape(masks)[-1])), pixels, axis=0)
        return images, masks, ops.cast(weights, "float32")[..., None]

    def get_config(self):
        return {**super().get_config(), "size": self.size, "seed": self.seed}


def _offset(seed, offset):
    """A distinct but reproducible seed for each sub-layer (None stays random)."""
    return None if seed is None else seed + offset
