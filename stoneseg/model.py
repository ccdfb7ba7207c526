"""The resnet18-UNet: a ResNet encoder, its feature pyramid by name, a UNet decoder and a mask head.

The network matches segmentation_models 1.0.1
`Unet("resnet18", classes=1, activation="sigmoid", encoder_weights=None)`, whose encoder is
classification_models' pre-activation ResNet, layer for layer, with two deliberate differences:

- Input normalization is a fixed `Rescaling` from 0-255 to [-1, 1] instead of a
  `BatchNormalization` on the raw image (`bn_data`), so it has no statistics learned from the
  training data and training, evaluation and prediction all see the same preprocessing.
- A 1x1 projection shortcut is used only where the shape changes; segmentation_models also
  projects in the first block of stage 1, where input and output shapes are equal.

Together they remove 4,105 of segmentation_models' 14,340,570 parameters (9 in `bn_data`,
4,096 in that shortcut): 14,336,465 for resnet18, 24,452,049 for resnet34.

Only `keras.layers` are used (no `tf.*`, no `Lambda`), so the model saves to `.keras`, loads with
`safe_mode=True` and compiles with XLA (`jit_compile=True`). The one layer of our own, `PhotoScale`,
computes nothing: it carries the scale the network was trained at inside the `.keras` file.
"""

import keras
from keras import layers

from stoneseg.choices import BLOCKS_PER_STAGE, OUTPUT_STRIDE, OUTPUTS

STAGE_FILTERS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
PHOTO_SCALE_LAYER = "photo_scale"
PROBABILITIES_LAYER = "mask"
# float32 under any policy: pixels in, probabilities (and the second output's maps) out
FLOAT32_LAYERS = (PHOTO_SCALE_LAYER, PROBABILITIES_LAYER, *OUTPUTS[1:])

# classification_models' ResNet uses epsilon 2e-5; the decoder keeps Keras' 1e-3, as segmentation_models does.
# Both use momentum 0.99 (Keras' default, the prototype's) unless build_unet is given another.
ENCODER_EPSILON = 2e-5
PROTOTYPE_BN_MOMENTUM = 0.99


@keras.saving.register_keras_serializable(package="stoneseg")
class PhotoScale(layers.Layer):
    """Passes images through unchanged; its config records how the training photos were resized.

    `scale` F (0 < F <= 1): each photo was resized by F with its aspect ratio kept, so a new photo is
    resized by F before the network sees it. None: each photo was squashed to the model's input size.
    """

    def __init__(self, scale=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # pixels pass through exactly, even under mixed precision
        super().__init__(**kwargs)
        if scale is not None and not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1] or None, got {scale}")
        self.scale = None if scale is None else float(scale)

    def call(self, images):
        return images

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def model_output(model):
    """What `model` predicts besides the stone probability, read from its outputs' names: "binary" (the
    stone probability alone: every model saved before instance outputs), "boundary" or "distance"."""
    names = [tensor._keras_history.operation.name for tensor in model.outputs]
    if len(names) == 1:
        return "binary"
    if len(names) == 2 and names[0] == PROBABILITIES_LAYER and names[1] in OUTPUTS:
        return names[1]
    raise ValueError(f"{model.name}: outputs {names} are none of stoneseg's (a stone probability '{PROBABILITIES_LAYER}', "
                     f"then nothing or one of {', '.join(OUTPUTS[1:])})")


def model_scale(model):
    """The scale `model` was trained at (see PhotoScale), or None for a model of squashed photos."""
    try:
        return model.get_layer(PHOTO_SCALE_LAYER).scale
    except ValueError:  # no such layer: a squash model, or one saved before scales existed
        return None


# ---------------------------------------------------------------------------------------------
# Encoder: a pre-activation ResNet (BN -> ReLU -> conv) that returns its named feature pyramid.


def resnet_backbone(input_shape=(256, 256, 3), backbone="resnet18", scale=None, bn_momentum=PROTOTYPE_BN_MOMENTUM):
    """Return the ResNet encoder: 0-255 images in, a dict {"P1": stride 2, ..., "P5": stride 32} out.

    P1 is the stem activation, P2-P4 are the input activations of stages 2-4 and P5 is the final
    activation, the same tensors segmentation_models' UNet takes as skips and bottleneck. `scale` is
    recorded by a PhotoScale layer on the input (see there); `bn_momentum` is every BatchNormalization's.
    """
    if backbone not in BLOCKS_PER_STAGE:
        raise ValueError(f"unknown backbone {backbone!r}: choose one of {sorted(BLOCKS_PER_STAGE)}")
    _check_input_shape(input_shape)

    images = keras.Input(shape=input_shape, name="image")
    x = PhotoScale(scale, name=PHOTO_SCALE_LAYER)(images)
    x = layers.Rescaling(scale=1 / 127.5, offset=-1.0, name="normalize")(x)  # 0..255 -> -1..1

    x = layers.ZeroPadding2D(3, name="stem_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, kernel_initializer="he_uniform", name="stem_conv")(x)
    batchnorm = {"epsilon": ENCODER_EPSILON, "momentum": bn_momentum}
    pyramid = {"P1": _batchnorm_relu(x, "stem", batchnorm)}
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(pyramid["P1"])
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)

    for stage, (blocks, filters, stride) in enumerate(
        zip(BLOCKS_PER_STAGE[backbone], STAGE_FILTERS, STAGE_STRIDES), start=1
    ):
        for block in range(1, blocks + 1):
            name = f"stage{stage}_block{block}"
            preactivation = _batchnorm_relu(x, f"{name}_preact", batchnorm)
            if block == 1 and stage > 1:
                pyramid[f"P{stage}"] = preactivation  # the stage's input activation
            x = _basic_block(x, preactivation, filters, stride if block == 1 else 1, name, batchnorm)

    pyramid["P5"] = _batchnorm_relu(x, "post", batchnorm)
    return keras.Model(images, pyramid, name=f"{backbone}_encoder")


def _check_input_shape(input_shape):
    """Refuse shapes the encoder cannot halve five times; None (any size at run time) is allowed."""
    if len(input_shape) != 3 or input_shape[-1] is None:
        raise ValueError(f"input_shape must be (height, width, channels) with known channels, got {input_shape}")
    for side, size in zip(("height", "width"), input_shape[:2]):
        if size is not None and (size <= 0 or size % OUTPUT_STRIDE):
            raise ValueError(
                f"input {side} {size} (input_shape {tuple(input_shape)}) is not a positive multiple of "
                f"{OUTPUT_STRIDE}: the encoder halves the image 5 times; resize or crop to e.g. "
                f"{max(OUTPUT_STRIDE, round(size / OUTPUT_STRIDE) * OUTPUT_STRIDE)}"
            )


def _batchnorm_relu(x, name, batchnorm):
    x = layers.BatchNormalization(**batchnorm, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(inputs, preactivation, filters, stride, name, batchnorm):
    """Two 3x3 convs on the pre-activated input, added to the input (or its 1x1 projection)."""
    if stride != 1 or inputs.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, kernel_initializer="he_uniform", name=f"{name}_shortcut"
        )(preactivation)
    else:
        shortcut = inputs
    x = _conv3x3(preactivation, filters, stride, f"{name}_conv1")
    x = _batchnorm_relu(x, f"{name}_conv1", batchnorm)
    x = _conv3x3(x, filters, 1, f"{name}_conv2")
    return layers.Add(name=f"{name}_add")([x, shortcut])


def _conv3x3(x, filters, stride, name):
    # A strided conv pads explicitly, 1 pixel on every side, as classification_models does:
    # padding="same" would pad only the bottom and right edges on TensorFlow.
    if stride != 1:
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    padding = "same" if stride == 1 else "valid"
    return layers.Conv2D(
        filters, 3, strides=stride, padding=padding, use_bias=False, kernel_initializer="he_uniform", name=name
    )(x)


# ---------------------------------------------------------------------------------------------
# Decoder: from P5 back to full resolution, concatenating the pyramid level at each scale.


def unet_decoder(pyramid, decoder_filters=(256, 128, 64, 32, 16), bn_momentum=PROTOTYPE_BN_MOMENTUM):
    """Upsample P5 x2 five times; blocks 1-4 concatenate P4..P1, block 5 has no skip."""
    skip_levels = ("P4", "P3", "P2", "P1", None)
    if len(decoder_filters) != len(skip_levels):
        raise ValueError(
            f"decoder_filters needs {len(skip_levels)} values, one per x2 upsampling back to full size, "
            f"got {tuple(decoder_filters)}"
        )
    x = pyramid["P5"]
    for block, (filters, level) in enumerate(zip(decoder_filters, skip_levels), start=1):
        name = f"decoder_block{block}"
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample")(x)
        if level is not None:
            x = layers.Concatenate(name=f"{name}_concat_{level}")([x, pyramid[level]])
        for conv in (1, 2):
            x = layers.Conv2D(
                filters, 3, padding="same", use_bias=False, kernel_initializer="he_uniform", name=f"{name}_conv{conv}"
            )(x)
            x = _batchnorm_relu(x, f"{name}_conv{conv}", {"momentum": bn_momentum})
    return x


# ---------------------------------------------------------------------------------------------
# Head and the whole model.


def segmentation_head(x, num_classes=1, name=PROBABILITIES_LAYER, conv_name="head_conv"):
    """A 3x3 conv to per-pixel class scores, then sigmoid (one class) or softmax, in float32, named `name`."""
    activation = "sigmoid" if num_classes == 1 else "softmax"
    x = layers.Conv2D(num_classes, 3, padding="same", name=conv_name)(x)
    # float32 even under a mixed_float16 policy, so probabilities near 0 and 1 and the loss stay exact.
    return layers.Activation(activation, dtype="float32", name=name)(x)


def build_unet(input_shape=(256, 256, 3), backbone="resnet18", decoder_filters=(256, 128, 64, 32, 16), num_classes=1,
               scale=None, bn_momentum=PROTOTYPE_BN_MOMENTUM, output="binary"):
    """Return the UNet: images with values 0-255 (uint8 or float) in, per-pixel probabilities out.

    `output` (train --output): "binary", one output, the stone probability [N,H,W,1]; "boundary" or
    "distance", a second head on the same decoder features after it, named so and also sigmoid in [0, 1]:
    the probability that a pixel is on a stone's boundary band, or its stone's normalised distance to the
    stone's edge (stoneseg.targets). The stone probability is always the first output (`model_output`).

    Height and width must be multiples of 32, or None to accept any such size at run time. `scale`:
    the photos were resized by this factor for training (None: squashed to `input_shape`); it travels
    inside the saved model (`model_scale`). `bn_momentum`: every BatchNormalization's moving-average
    momentum (train --bn-momentum).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}: choose one of {', '.join(OUTPUTS)}")
    encoder = resnet_backbone(input_shape, backbone, scale, bn_momentum)
    features = unet_decoder(encoder.output, decoder_filters, bn_momentum)
    masks = segmentation_head(features, num_classes)
    if output == "binary":
        return keras.Model(encoder.input, masks, name=f"unet_{backbone}")
    second = segmentation_head(features, 1, name=output, conv_name=f"{output}_head_conv")
    return keras.Model(encoder.input, [masks, second], name=f"unet_{backbone}_{output}")
