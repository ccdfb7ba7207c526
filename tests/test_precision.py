"""--precision: how auto resolves on each kind of hardware (injected, no hardware needed), the whole train
step under each policy forced on the CPU, and a saved model run by predict and evaluate under a policy."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from stoneseg import evaluate, inference, predict, precision, train
from stoneseg.augment import SegmentationAugmentation
from stoneseg.metrics import make_loss, training_metrics
from stoneseg.model import FLOAT32_LAYERS, PHOTO_SCALE_LAYER, PROBABILITIES_LAYER, build_unet
from stoneseg.precision import Hardware, Precision
from stoneseg.trainer import SegmentationTrainer

ZEN4 = frozenset({"sse4_2", "avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx512f", "amx_tile", "amx_bf16"})
SKYLAKE = frozenset({"sse4_2", "avx2", "avx512f"})


@pytest.fixture(autouse=True)
def float32_afterwards():
    """Every test here ends with Keras' global policy as it found it, whatever it did or failed."""
    before = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(before)


# ----------------------------------------------------------------------------- auto
@pytest.mark.parametrize("hardware, expected", [
    (Hardware(cpu_flags=ZEN4), "bfloat16"),
    (Hardware(cpu_flags=SAPPHIRE_RAPIDS), "bfloat16"),
    (Hardware(cpu_flags=SKYLAKE), "float32"),
    (Hardware(), "float32"),  # no /proc/cpuinfo (macOS, Windows): no flags known
    (Hardware(cpu_flags=SKYLAKE, gpu_capabilities=((7, 5),)), "float16"),  # T4
    (Hardware(cpu_flags=SKYLAKE, gpu_capabilities=((7, 0),)), "float16"),  # V100
    (Hardware(cpu_flags=SKYLAKE, gpu_capabilities=((8, 0),)), "bfloat16"),  # A100
    (Hardware(cpu_flags=SKYLAKE, gpu_capabilities=((9, 0),)), "bfloat16"),  # H100
    (Hardware(cpu_flags=ZEN4, gpu_capabilities=((7, 5),)), "float16"),  # the GPU trains, not the CPU
    (Hardware(gpu_capabilities=((8, 6), (7, 5))), "float16"),  # the oldest GPU decides
    (Hardware(tpu=True), "bfloat16"),
])
def test_auto_picks_what_the_hardware_computes_natively(hardware, expected):
    resolved = precision.resolve("auto", hardware)
    assert resolved.name == expected
    assert resolved.reason.startswith("auto: ")


@pytest.mark.parametrize("choice, policy", [("float32", "float32"), ("bfloat16", "mixed_bfloat16"),
                                            ("float16", "mixed_float16")])
def test_an_explicit_choice_is_taken_whatever_the_hardware(choice, policy):
    for hardware in (Hardware(), Hardware(cpu_flags=ZEN4), Hardware(gpu_capabilities=((7, 5),)), Hardware(tpu=True)):
        resolved = precision.resolve(choice, hardware)
        assert (resolved.name, resolved.policy) == (choice, policy)


def test_cpu_flags_come_from_the_first_processor_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert precision.cpu_info(cpuinfo) == ("AMD EPYC 9R14", frozenset({"fpu", "avx512f", "avx512_bf16"}))
    assert precision.cpu_info(tmp_path / "missing") == ("unknown", frozenset())


# ----------------------------------------------------------------------------- the train step
def one_batch(size=64):
    rows, cols = np.mgrid[:size, :size]
    masks = ((rows - size * 0.45) ** 2 + (cols - size * 0.55) ** 2 < (size * 0.3) ** 2).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 20, (2, size, size, 3))
    images = np.clip(60 + 120 * masks[None, ..., None] + noise, 0, 255).astype(np.float32)
    return images, np.repeat(masks[None, ..., None], 2, axis=0)


def head_gradient_float32(weights, images, masks):
    """The float32 gradient of the BCE loss with respect to the head kernel, from `weights`."""
    reference = build_unet((64, 64, 3))
    reference.set_weights(weights)
    kernel = reference.get_layer("head_conv").kernel
    with tf.GradientTape() as tape:
        loss = keras.losses.BinaryCrossentropy()(masks, reference(images, training=True))
    return tape.gradient(loss, kernel).numpy()


@pytest.mark.parametrize("choice, compute, loss_scale", [("float32", "float32", 1.0), ("bfloat16", "bfloat16", 1.0),
                                                         ("float16", "float16", 2.0 ** 15)])
def test_the_whole_train_step_under_each_policy(choice, compute, loss_scale):
    """Forced on the CPU as a GPU or TPU would resolve it: the network computes in the policy's dtype; only
    float16 gets a LossScaleOptimizer and scaled gradients; augmentation, probabilities and the loss are
    float32; one step of fit gives a finite loss and moves the weights."""
    images, masks = one_batch()
    with precision.global_policy(Precision(choice, "test")):
        network = build_unet((64, 64, 3))
        trainer = SegmentationTrainer(network, SegmentationAugmentation(seed=0))
        trainer.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("bce"), metrics=training_metrics(),
                        jit_compile=False)
        trainer.build((None, 64, 64, 3))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (choice == "float16")
    assert network.get_layer("head_conv").compute_dtype == compute
    assert network.get_layer("decoder_block1_conv1").compute_dtype == compute
    kept = [layer for layer in network.layers if layer.name in FLOAT32_LAYERS]  # a binary network has no 2nd head
    assert len(kept) == 2 and {layer.compute_dtype for layer in kept} == {"float32"}
    assert {variable.dtype for variable in network.weights} == {"float32"}

    augmented = trainer.augmentation(images, masks, training=True)
    assert [tensor.dtype for tensor in augmented] == ["float32", "float32"]

    weights = network.get_weights()
    loss, predictions, gradients = trainer._gradients(tf.constant(images), tf.constant(masks), None)
    assert loss.dtype == "float32" and predictions.dtype == "float32"
    kernel = network.get_layer("head_conv").kernel
    head = [gradient for gradient, variable in zip(gradients, trainer.trainable_variables) if variable is kernel][0]
    expected = head_gradient_float32(weights, images, masks)
    ratio = np.linalg.norm(np.asarray(head, np.float64)) / np.linalg.norm(expected)
    assert ratio == pytest.approx(loss_scale, rel=0.1)  # float16's gradients come scaled up, the others not

    history = trainer.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(network.get_layer("head_conv").kernel.numpy(), weights[-2])


# ----------------------------------------------------------------------------- a saved model under a policy
@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory):
    """A float32 UNet (any input size, scale 0.5) saved as a .keras file."""
    path = tmp_path_factory.mktemp("precision") / "unet.keras"
    build_unet((None, None, 3), scale=0.5).save(path)
    return path


def test_a_float32_model_runs_in_bfloat16_when_loaded_so_and_back(saved_unet, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (1, 64, 96, 3)).astype(np.uint8)
    as_saved = inference.load_model(saved_unet)
    assert as_saved.get_layer("head_conv").compute_dtype == "float32"
    expected = as_saved.predict_on_batch(images)

    model = inference.load_model(saved_unet, Precision("bfloat16", "test"))
    assert keras.mixed_precision.global_policy().name == "float32"  # the model changed, not the global policy
    assert model.get_layer("head_conv").compute_dtype == "bfloat16"
    assert model.get_layer(PHOTO_SCALE_LAYER).compute_dtype == "float32"
    assert model.get_layer(PROBABILITIES_LAYER).compute_dtype == "float32"
    probabilities = model.predict_on_batch(images)
    assert probabilities.dtype == np.float32
    assert 0 < np.abs(probabilities - expected).max() < 0.1  # computed in bfloat16: close, not equal

    # A model saved in bfloat16 runs in float32 again when asked.
    model.save(tmp_path / "bf16.keras")
    back = inference.load_model(tmp_path / "bf16.keras", Precision("float32", "test"))
    assert {layer.compute_dtype for layer in back.layers} == {"float32"}
    np.testing.assert_allclose(back.predict_on_batch(images), expected, atol=1e-5)


@pytest.mark.parametrize("command", [predict, evaluate])
def test_predict_and_evaluate_take_precision_and_refuse_a_bad_one(command, capsys):
    source = [] if command is predict else ["--data", "photos"]
    out = ["--out", "out"]
    assert command.parse_args(["m.keras", *(["p.jpg"] if command is predict else []), *out, *source]).precision == "auto"
    chosen = command.parse_args(["m.keras", *(["p.jpg"] if command is predict else []), *out, *source,
                                 "--precision", "bfloat16"])
    assert chosen.precision == "bfloat16"
    with pytest.raises(SystemExit) as exit_:
        command.parse_args(["m.keras", *(["p.jpg"] if command is predict else []), *out, *source,
                            "--precision", "half"])
    assert exit_.value.code == 2
    assert "argument --precision: invalid choice: 'half'" in capsys.readouterr().err


def test_predict_runs_the_model_in_the_precision_asked_for(saved_unet, tiny_photos, tmp_path, capsys, monkeypatch):
    photo = tiny_photos / "Image01.JPG"
    loaded = []
    monkeypatch.setattr(predict, "load_model", lambda *args: loaded.append(inference.load_model(*args)) or loaded[-1])
    for choice in ("float32", "bfloat16"):
        out = tmp_path / choice
        assert predict.main([str(saved_unet), str(photo), "--out", str(out), "--precision", choice]) == 0
        assert f"precision {choice} (Keras policy {precision.POLICIES[choice]}; asked for)" in capsys.readouterr().out
        assert (out / f"{photo.stem}_mask.png").is_file()
        assert loaded[-1].get_layer("head_conv").compute_dtype == choice
        assert loaded[-1].get_layer(PROBABILITIES_LAYER).compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


# ----------------------------------------------------------------------------- train
def test_train_prints_and_records_the_resolved_policy_and_restores_the_global_one(tiny_records, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--records", str(tiny_records), "--run-dir", str(run), "--epochs", "1", "--steps-per-epoch",
                       "1", "--batch-size", "2", "--val-images", "1", "--precision", "bfloat16"]) == 0
    assert "precision bfloat16 (Keras policy mixed_bfloat16; asked for)" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert (config["precision"], config["dtype_policy"], config["arguments"]["precision"]) == (
        "bfloat16", "mixed_bfloat16", "bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    saved = keras.models.load_model(run / "best.keras")
    assert saved.get_layer("head_conv").dtype_policy.name == "mixed_bfloat16"
    assert saved.get_layer(PROBABILITIES_LAYER).dtype_policy.name == "float32"


def test_mixed_precision_is_gone_with_a_pointer_to_precision(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--mixed-precision"])
    assert "--mixed-precision is gone: use --precision float16" in capsys.readouterr().err


def test_train_defaults_to_float32_and_predict_to_auto():
    """train stays float32 (bfloat16 trained worse than float32's seed noise on stones20, docs/training.md); predict
    and evaluate run auto (their masks agree with float32's on 99.8 % of stones20's pixels)."""
    assert train.parse_args([]).precision == "float32"
    assert predict.parse_args(["m.keras", "p.jpg", "--out", "o"]).precision == "auto"
