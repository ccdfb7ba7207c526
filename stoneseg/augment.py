"""The prototype's rotate/flip augmentation, applied on the training device to images and masks alike.

Built from core Keras 3 preprocessing layers, which transform an `{"images", "segmentation_masks"}`
batch with one draw per image and resample masks nearest, so masks stay exactly {0, 1}.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="stoneseg")
class SegmentationAugmentation(keras.layers.Layer):
    """Rotation up to ±`max_rotation_degrees` with probability `rotation_probability`, then a
    horizontal and a vertical flip, each with p = 0.5; drawn fresh for every image at every call.

    `call(images, masks)` returns float32 `(images, masks)`; with `training=False` it returns them
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

    def call(self, images, masks, training=True):
        images = ops.cast(images, "float32")
        masks = ops.cast(masks, "float32")
        if not training:
            return images, masks
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


def _offset(seed, offset):
    """A distinct but reproducible seed for each sub-layer (None stays random)."""
    return None if seed is None else seed + offset
