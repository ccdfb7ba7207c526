"""Tests for stoneseg.model: shapes, parameter count against segmentation_models, serialization, a tiny fit."""

import keras
import numpy as np
import pytest

from stoneseg.model import build_unet, model_scale, resnet_backbone

# Measured, not derived: count_params() of segmentation_models 1.0.1 (SM_FRAMEWORK=tf.keras, TensorFlow
# 2.15.1) `Unet("resnet18"|"resnet34", classes=1, activation="sigmoid", encoder_weights=None)`
# at input_shape (256, 256, 3), built in a separate throwaway venv.
SM_RESNET18_UNET_PARAMS = 14_340_570
SM_RESNET34_UNET_PARAMS = 24_456_154
# Our two deviations: no `bn_data` BatchNormalization on the image (beta, moving mean and moving
# variance for 3 channels, scale=False) and no 1x1 shortcut in stage 1 block 1 (64 -> 64, no bias).
FEWER_THAN_SM = 3 * 3 + 64 * 64
RESNET18_UNET_PARAMS = 14_336_465
RESNET34_UNET_PARAMS = 24_452_049


def random_images(batch, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def unet256():
    keras.utils.set_random_seed(0)
    return build_unet()


@pytest.mark.parametrize("height, width", [(256, 256), (320, 480), (64, 64)])
def test_output_is_one_probability_per_pixel(height, width, unet256):
    model = unet256 if (height, width) == (256, 256) else build_unet((height, width, 3))
    masks = model.predict(random_images(2, height, width), verbose=0)
    assert masks.shape == (2, height, width, 1)
    assert masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert masks.std() > 0, "the head should not output a constant"


def test_dynamic_size_model_runs_on_any_multiple_of_32():
    model = build_unet((None, None, 3))
    assert model(random_images(1, 64, 96)).shape == (1, 64, 96, 1)
    assert model(random_images(1, 128, 32)).shape == (1, 128, 32, 1)


def test_parameter_count_is_segmentation_models_minus_the_two_deviations(unet256):
    count = unet256.count_params()
    assert count == RESNET18_UNET_PARAMS  # the figure docs/model.md quotes
    assert count == SM_RESNET18_UNET_PARAMS - FEWER_THAN_SM
    layer_names = {layer.name for layer in unet256.layers}
    assert "bn_data" not in layer_names and unet256.get_layer("normalize").count_params() == 0
    assert "stage1_block1_shortcut" not in layer_names  # same shape in and out: identity
    assert {"stage2_block1_shortcut", "stage3_block1_shortcut", "stage4_block1_shortcut"} <= layer_names
    # A projection shortcut is a bias-free 1x1 conv: in stage 1 (64 -> 64) it would hold 64 * 64 weights.
    assert unet256.get_layer("stage2_block1_shortcut").count_params() == 64 * 128


def test_resnet34_differs_only_in_blocks_per_stage():
    model = build_unet((64, 64, 3), backbone="resnet34")
    assert model.count_params() == RESNET34_UNET_PARAMS
    assert model.count_params() == SM_RESNET34_UNET_PARAMS - FEWER_THAN_SM
    layer_names = {layer.name for layer in model.layers}
    assert {"stage1_block3_add", "stage2_block4_add", "stage3_block6_add", "stage4_block3_add"} <= layer_names
    assert "stage3_block7_add" not in layer_names


def test_encoder_pyramid_is_named_by_level():
    encoder = resnet_backbone((256, 320, 3))
    shapes = {level: tuple(tensor.shape) for level, tensor in encoder.output.items()}
    assert shapes == {
        "P1": (None, 128, 160, 64),
        "P2": (None, 64, 80, 64),
        "P3": (None, 32, 40, 128),
        "P4": (None, 16, 20, 256),
        "P5": (None, 8, 10, 512),
    }
    # P2-P4 are the stage inputs after pre-activation, the tensors segmentation_models skips from.
    assert encoder.output["P3"] is encoder.get_layer("stage3_block1_preact_relu").output


def test_normalization_maps_0_255_to_minus_1_1(unet256):
    normalized = unet256.get_layer("normalize")(np.array([0.0, 127.5, 255.0], dtype=np.float32))
    np.testing.assert_allclose(np.asarray(normalized), [-1.0, 0.0, 1.0], atol=1e-6)


def test_uint8_and_float32_inputs_give_the_same_masks(unet256):
    images = random_images(1, 256, 256, seed=1)
    from_uint8 = unet256.predict(images, verbose=0)
    from_float = unet256.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_array_equal(from_uint8, from_float)


def test_keras_file_round_trip_gives_identical_masks(unet256, tmp_path):
    path = tmp_path / "unet.keras"
    unet256.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    images = random_images(2, 256, 256, seed=2)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), unet256.predict(images, verbose=0))
    assert loaded.count_params() == RESNET18_UNET_PARAMS


def test_scale_travels_inside_the_keras_file(unet256, tmp_path):
    assert model_scale(unet256) is None  # squashed photos
    path = tmp_path / "scaled.keras"
    build_unet((None, None, 3), scale=0.25).save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert model_scale(loaded) == 0.25
    assert loaded.input_shape == (None, None, None, 3)


def test_model_without_a_scale_layer_reads_as_squashed():
    images = keras.Input((64, 64, 3))
    assert model_scale(keras.Model(images, keras.layers.Conv2D(1, 1)(images))) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (250, 250, 3)}, "height 250 .* not a positive multiple of 32"),
        ({"input_shape": (256, 250, 3)}, "width 250 .* not a positive multiple of 32"),
        ({"backbone": "resnet50"}, r"unknown backbone 'resnet50': choose one of \['resnet18', 'resnet34'\]"),
        ({"decoder_filters": (256, 128, 64)}, "decoder_filters needs 5 values"),
        ({"num_classes": 0}, "num_classes must be at least 1"),
        ({"scale": 0.0}, r"scale must be in \(0, 1\] or None, got 0.0"),
        ({"scale": 1.5}, r"scale must be in \(0, 1\] or None, got 1.5"),
    ],
)
def test_bad_arguments_get_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_unet(**kwargs)



def batchnorms(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def test_every_batchnorm_takes_the_momentum_asked_for_and_keeps_its_epsilon(unet256):
    """Momentum 0.99 (the prototype's) unless told; encoder epsilon 2e-5 (classification_models'), decoder
    Keras' 1e-3, either way. resnet18: 1 stem + 8 blocks x 2 + 1 post in the encoder, 5 x 2 in the decoder."""
    quick = build_unet((64, 64, 3), bn_momentum=0.9)
    for model, momentum in ((unet256, 0.99), (quick, 0.9)):
        layers = batchnorms(model)
        assert len(layers) == 18 + 10 and {layer.momentum for layer in layers} == {momentum}
        assert sorted({layer.epsilon for layer in layers}) == [2e-5, 1e-3]
        assert sum(layer.epsilon == 2e-5 for layer in layers) == 18
    assert quick.count_params() == build_unet((64, 64, 3)).count_params() == RESNET18_UNET_PARAMS

def test_several_classes_get_a_softmax():
    probabilities = build_unet((64, 64, 3), num_classes=3).predict(random_images(1, 64, 64), verbose=0)
    assert probabilities.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


def test_mixed_precision_computes_in_float16_but_outputs_float32(mixed_float16):
    model = build_unet((64, 64, 3))
    assert model.get_layer("head_conv").compute_dtype == "float16"
    assert model.get_layer("mask").compute_dtype == "float32"
    masks = model.predict(random_images(1, 64, 64), verbose=0)
    assert masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
