"""`python -m stoneseg.train` end to end on tiny records: strategies, run folder, TensorBoard, resume."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from stoneseg import distribute
import stoneseg.model  # noqa: F401  registers PhotoScale, which best.keras holds
from stoneseg.callbacks import ResumableEarlyStopping, read_history, trim_history
from stoneseg.metrics import make_loss, training_metrics
from stoneseg.model import build_unet, model_scale
from stoneseg.train import _run_arguments, find_run_dir, main, parse_args, steps_per_epoch, training_crop
from stoneseg.trainer import SegmentationTrainer

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--val-images", "2"]
# Early stopping that fires at a known epoch whatever the losses are: no epoch can beat the first by 10,
# so a run stops after epoch index 2 (patience 2). --epoch-images 4 is less than one pass over the 8
# train photos, so an epoch is one pass: 4 steps of 2.
EARLY_STOP = ["--epochs", "6", "--patience", "2", "--min-delta", "10", "--epoch-images", "4", "--batch-size", "2",
              "--val-images", "2"]
EARLY_STOP_EPOCHS = [0, 1, 2]


def train_command(records, run_dir, *extra):
    run_dir = ["--run-dir", str(run_dir)] if run_dir is not None else []
    return [sys.executable, "-m", "stoneseg.train", "--records", str(records), *run_dir, *extra]


def run_train(records, run_dir, *extra, env=None):
    result = subprocess.run(
        train_command(records, run_dir, *extra), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, result.stderr


@pytest.fixture(scope="module")
def mirrored_run(tiny_records, tmp_path_factory):
    """The run folder, stdout and stderr of a short mirrored run that early-stops (EARLY_STOP), started as a
    user would (output to a pipe)."""
    run_dir = tmp_path_factory.mktemp("runs") / "mirrored"
    return run_dir, *run_train(tiny_records, run_dir, "--strategy", "mirrored", *EARLY_STOP)


def test_mirrored_trains_end_to_end_on_cpu_and_stops_early(mirrored_run, tiny_records):
    run_dir, stdout, _ = mirrored_run
    assert "strategy mirrored (MirroredStrategy): 1 replica(s)" in stdout and "global batch 2" in stdout
    assert "4 steps per epoch" in stdout and "XLA off" in stdout  # --jit is off by default on a CPU
    assert "best epoch 1 of 3" in stdout and str(run_dir / "best.keras") in stdout
    model = keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    assert model.name == "unet_resnet18" and model.input_shape == (None, 64, 64, 3)
    probabilities = model.predict(np.zeros((1, 64, 64, 3), np.uint8), verbose=0)
    assert probabilities.shape == (1, 64, 64, 1)
    history = read_history(run_dir / "history.csv")
    assert [row["epoch"] for row in history] == EARLY_STOP_EPOCHS  # stopped early, 3 of 6 epochs
    assert {"loss", "iou", "dice", "val_loss", "val_iou", "val_dice"} <= set(history[0])
    assert not (run_dir / "backup").exists()  # a finished run leaves no backup


def test_config_records_arguments_versions_and_manifest_hash(mirrored_run, tiny_records):
    run_dir, *_ = mirrored_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arguments"]["strategy"] == "mirrored" and config["arguments"]["lr"] == 1e-3
    assert config["arguments"]["loss"] == "bce" and config["arguments"]["patience"] == 2
    assert config["jit"] is False and config["arguments"]["jit"] is None  # not asked for: off on a CPU
    assert config["packages"]["tensorflow"] == tf.__version__ and config["packages"]["keras"] == keras.__version__
    import hashlib

    assert config["manifest_sha256"] == hashlib.sha256((tiny_records / "manifest.json").read_bytes()).hexdigest()


def test_tensorboard_has_the_scalars_and_the_validation_images(mirrored_run):
    run_dir, *_ = mirrored_run
    tags = {}
    for events in (run_dir / "logs").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tags.setdefault(events.parent.name, {}).setdefault(value.tag, []).append(value)
    epochs = len(EARLY_STOP_EPOCHS)
    for scalar in ("epoch_loss", "epoch_iou", "epoch_dice"):
        assert len(tags["train"][scalar]) == epochs and len(tags["validation"][scalar]) == epochs
    assert set(tags["train"]) == {"epoch_loss", "epoch_iou", "epoch_dice", "epoch_learning_rate"}  # docs/training.md
    assert set(tags["validation"]) == {"epoch_loss", "epoch_iou", "epoch_dice", "evaluation_loss_vs_iterations",
                                       "evaluation_iou_vs_iterations", "evaluation_dice_vs_iterations"}
    images = tags["images"]["validation/photo_truth_prediction"]
    assert len(images) == epochs  # one per epoch
    # Each image summary holds the photos as PNGs, photo | truth | prediction side by side.
    panel = tf.io.decode_png(tf.make_ndarray(images[0].tensor)[2]).numpy()
    assert panel.shape == (64, 3 * 64, 3)
    truth = panel[:, 64:128]
    assert set(np.unique(truth)) <= {0, 255}


def test_the_same_command_resumes_a_killed_run_and_stops_where_the_uninterrupted_run_did(mirrored_run, tiny_records,
                                                                                       tmp_path):
    """The mirrored_run command without --run-dir, SIGKILLed after its first backed-up epoch, then started
    again as it was: it finds its unfinished run under runs/, resumes after the backed-up epoch, and early
    stopping fires at the uninterrupted run's epoch. Before the restart, history.csv gets the row a kill
    between CSVLogger and BackupAndRestore leaves (an epoch logged but not backed up, here with an
    unbeatable val_loss): the resumed run must drop it, not take its best value and patience from it."""
    command = train_command(tiny_records, None, "--strategy", "mirrored", *EARLY_STOP)
    env = dict(os.environ, PYTHONPATH=str(REPO))  # run from tmp_path, with this checkout's stoneseg
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob("runs/*/backup/training_metadata.json")) and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir, = [path.parent for path in tmp_path.glob("runs/*/config.json")]
    done = json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"]
    assert 1 <= done < len(EARLY_STOP_EPOCHS), "killed after the first epoch, before early stopping"
    history_csv = run_dir / "history.csv"
    rows = history_csv.read_text().splitlines()
    if len(rows) == 1 + done:  # header + the backed-up epochs: add the row a kill between the writers leaves
        logged = dict(zip(rows[0].split(","), rows[-1].split(",")), epoch=str(done), val_loss="0.0")
        history_csv.write_text("\n".join(rows + [",".join(logged[key] for key in rows[0].split(","))]) + "\n")

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming {Path('runs') / run_dir.name} from its backup after epoch {done} (dropped 1 history row" \
        in result.stdout
    assert "Epoch 1/6" not in result.stdout and f"Epoch {done + 1}/6" in result.stdout
    uninterrupted = [row["epoch"] for row in read_history(mirrored_run[0] / "history.csv")]
    with history_csv.open(newline="") as file:
        logged_epochs = [int(row["epoch"]) for row in csv.DictReader(file)]
    assert logged_epochs == uninterrupted == EARLY_STOP_EPOCHS  # each epoch once; stopped at the same epoch
    assert "best epoch 1 of 3" in result.stdout
    assert (run_dir / "best.keras").is_file() and not (run_dir / "backup").exists()



# The cosine recipe on 4 epochs of 4 steps (--epoch-images 4 is one pass over the 8 train photos in
# batches of 2): a warm-up of 4 steps, then the cosine over 12, so each epoch ends at another rate.
COSINE = ["--recipe", "cosine", "--epochs", "4", "--epoch-images", "4", "--batch-size", "2", "--val-images", "2"]
COSINE_RATES = [1e-3, 1e-3 * (0.01 + 0.99 * 0.75), 1e-3 * (0.01 + 0.99 * 0.25), 1e-5]  # after steps 4, 8, 12, 16


def logged_learning_rates(run_dir):
    """TensorBoard's epoch_learning_rate as {epoch: rate} (the last one logged for an epoch logged twice)."""
    rates = {}
    for events in sorted((run_dir / "logs" / "train").glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == "epoch_learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    return rates


@pytest.fixture(scope="module")
def cosine_run(tiny_records, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "cosine"
    return run_dir, *run_train(tiny_records, run_dir, *COSINE)


def test_the_cosine_recipe_logs_its_schedule_and_records_the_recipe(cosine_run):
    run_dir, stdout, stderr = cosine_run
    assert stderr == "" and "4 steps per epoch" in stdout
    assert logged_learning_rates(run_dir) == pytest.approx(dict(enumerate(COSINE_RATES)), rel=1e-5)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recipe"] == {"name": "cosine", "overridden": ["batch_size", "epoch_images"], "settings": {
        "lr": 1e-3, "schedule": "cosine", "warmup_epochs": 1, "weight_decay": 0.004, "loss": "bce_dice", "batch_size": 2,
        "epoch_images": 4, "bn_momentum": 0.9, "monitor": "val_iou", "patience": 10}}
    assert config["arguments"]["recipe"] == "cosine" and config["arguments"]["monitor"] == "val_iou"
    history = read_history(run_dir / "history.csv")
    best = max(history, key=lambda row: row["val_iou"])  # the first of the highest, as the checkpoint keeps it
    assert f"best epoch {int(best['epoch']) + 1} of 4: " in stdout and f"val IoU {best['val_iou']:.4f}" in stdout


def test_a_resumed_run_continues_the_schedule_where_it_stopped(cosine_run, tiny_records, tmp_path):
    """Killed after a backed-up epoch and started again, a cosine run logs at each epoch the learning rate
    of the uninterrupted run: the schedule follows the optimizer's step counter, which the backup holds."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(tiny_records, run_dir, *COSINE), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run_dir / "backup" / "training_metadata.json").is_file() and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads((run_dir / "backup" / "training_metadata.json").read_text())["epoch"]
    assert 1 <= done < 4, "killed after the first epoch, before the last"

    stdout, _ = run_train(tiny_records, run_dir, *COSINE)
    assert f"resuming {run_dir} from its backup after epoch {done}" in stdout and "Epoch 1/4" not in stdout
    # The killed run may not have flushed its TensorBoard events; the resumed run logs every epoch it trains.
    resumed, uninterrupted = logged_learning_rates(run_dir), logged_learning_rates(cosine_run[0])
    assert set(range(done, 4)) <= set(resumed)
    assert resumed == pytest.approx({epoch: uninterrupted[epoch] for epoch in resumed}, rel=1e-6)
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == [0, 1, 2, 3]

def test_resumed_early_stopping_replays_the_history_with_min_delta(tmp_path):
    """Epochs 1 and 2 fall by less than min_delta, so EarlyStopping keeps epoch 0 as best with a wait of 2;
    the lowest val_loss (epoch 2) is not what it counts from."""
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n0,0.9,0.70\n1,0.8,0.69\n2,0.7,0.68\n")
    stopping = ResumableEarlyStopping(history, monitor="val_loss", mode="min", patience=5, min_delta=0.05)
    stopping.on_train_begin()
    assert (stopping.best, stopping.best_epoch, stopping.wait) == (0.70, 0, 2)


def test_history_rows_after_the_backup_are_dropped(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n0,0.9,0.7\n1,0.8,0.6\n2,0.7,0.5\n")
    assert trim_history(history, 2) == 1
    assert history.read_text() == "epoch,loss,val_loss\n0,0.9,0.7\n1,0.8,0.6\n"
    assert trim_history(history, 2) == 0 and trim_history(tmp_path / "absent.csv", 0) == 0


def test_multi_worker_trains_with_two_local_workers(tiny_records, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    run_dir = tmp_path / "run"
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(
            subprocess.Popen(
                train_command(tiny_records, run_dir, "--strategy", "multi_worker", *QUICK),
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    outputs = [worker.communicate(timeout=400)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    assert "strategy multi_worker (CollectiveAllReduceStrategy): 2 replica(s), 2 worker(s)" in outputs[0]
    for output in outputs:  # each worker reads its own 4 of the 8 train shards (test_data checks the split)
        assert "8 train shard(s) split across workers by file" in output
    assert "global batch 4" in outputs[0]
    keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == [0, 1]
    assert not (run_dir / "worker-1").exists()  # the other worker's scratch folder is cleaned up


def test_the_same_command_finds_its_unfinished_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse_args(["--epochs", "3"])
    unfinished = tmp_path / "runs" / "20260101-000000"
    (unfinished / "backup").mkdir(parents=True)
    (unfinished / "config.json").write_text(json.dumps({"arguments": json.loads(json.dumps(_run_arguments(args)))}))
    assert find_run_dir(args) == Path("runs/20260101-000000")
    assert find_run_dir(parse_args(["--epochs", "3", "--skip-hash"])) == Path("runs/20260101-000000")  # same run
    assert find_run_dir(parse_args(["--epochs", "4"])) != Path("runs/20260101-000000")
    (unfinished / "backup").rmdir()  # finished runs are never reused
    assert find_run_dir(args) != Path("runs/20260101-000000")


@pytest.mark.parametrize("argv, train_photos, global_batch, expected", [
    ([], 16, 4, 60),  # the prototype's epoch: 240 augmented images
    ([], 16, 8, 30),
    ([], 1000, 4, 250),  # more photos than that: one pass over them
    (["--epoch-images", "100"], 16, 4, 25),
    (["--steps-per-epoch", "7"], 1000, 4, 7),
])
def test_an_epoch_is_240_images_or_one_pass(argv, train_photos, global_batch, expected):
    assert steps_per_epoch(parse_args(argv), train_photos, global_batch) == expected


def test_strategy_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="unknown strategy 'gpu'"):
        distribute.resolve_strategy("gpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.resolve_strategy("multi_worker")


def test_help_lists_the_recipe_defaults():
    result = subprocess.run([sys.executable, "-m", "stoneseg.train", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--strategy", "--loss", "--lr", "--epochs", "--batch-size", "--precision", "--jit", "--no-jit"):
        assert flag in result.stdout


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_run_logs_plain_lines_and_nothing_on_stderr(mirrored_run):
    """With stdout a pipe, Keras prints one line per epoch without a progress bar's escape codes, and
    TensorFlow's start-up notices are dropped, so stderr is empty."""
    _, stdout, stderr = mirrored_run
    assert stderr == ""
    assert "\x1b" not in stdout and "\r" not in stdout and "━" not in stdout
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("4/4 - ")]
    assert len(epoch_lines) == len(EARLY_STOP_EPOCHS) and all("val_loss: " in line for line in epoch_lines)


def test_a_finished_run_folder_is_not_trained_again(mirrored_run, tiny_records):
    run_dir, *_ = mirrored_run
    before = (run_dir / "best.keras").read_bytes()
    result = subprocess.run(train_command(tiny_records, run_dir, "--strategy", "mirrored", *EARLY_STOP),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "holds a finished run (3 epochs)" in result.stderr
    assert (run_dir / "best.keras").read_bytes() == before


# ----------------------------------------------------------------------------- --crop
@pytest.fixture(scope="module")
def scale_records(tiny_photos, tmp_path_factory):
    """tiny_photos (96x128) at scale 0.5: 48x64 records."""
    from tools.build_records import main as build_records

    out = tmp_path_factory.mktemp("scale") / "records"
    assert build_records(["--data", str(tiny_photos), "--out", str(out), "--scale", "0.5", "--workers", "1"]) == 0
    return out


def test_scale_records_train_on_crops_into_a_model_that_carries_its_scale(scale_records, tmp_path):
    run_dir = tmp_path / "run"
    # Mirrored: Keras then builds the network from the first batch, which must be a crop, not a padded record.
    stdout, stderr = run_train(scale_records, run_dir, "--strategy", "mirrored", "--crop", "32", "--epochs", "1",
                               "--steps-per-epoch", "1", "--batch-size", "2", "--val-images", "2")
    assert "records scale 0.5, random 32x32 crops" in stdout and stderr == ""
    model = keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    assert model.input_shape == (None, None, None, 3) and model_scale(model) == 0.5
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["records_mode"], config["records_scale"], config["arguments"]["crop"]) == ("scale", 0.5, 32)
    assert set(read_history(run_dir / "history.csv")[0]) >= {"iou", "val_iou", "val_loss"}


@pytest.mark.parametrize("crop", ["0", "-32", "48", "100"])
def test_a_crop_that_is_not_a_positive_multiple_of_32_is_refused(crop, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--crop", crop])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m stoneseg.train: error: --crop {crop} is not a positive multiple of 32 (the network halves the "
        "image 5 times)")


@pytest.mark.parametrize("mode, crop, expected", [
    ("scale", None, 256), ("scale", 64, 64), ("squash", None, None), ("squash", 32, 32)])
def test_scale_records_train_on_256_crops_unless_told_otherwise(mode, crop, expected):
    assert training_crop(crop, {"mode": mode}) == expected


@pytest.fixture(scope="module")
def mixed_records(tiny_records, tmp_path_factory):
    """tiny_records' squash shards under a manifest that says scale 0.5: a folder mixing two builds."""
    folder = tmp_path_factory.mktemp("mixed") / "records"
    shutil.copytree(tiny_records, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "mode": "scale", "scale": 0.5, "image_size": None}))
    return folder


@pytest.mark.parametrize("records, flags, problem", [
    ("tiny", ["--crop", "96"], "--crop 96 is larger than the records in {records} (squash 64x64); crop at most 64"),
    ("scale", ["--crop", "32", "--image-size", "64"], "--image-size 64: the records in {records} are scale 0.5"),
    ("mixed", ["--crop", "32"], "{records}/train-00000-of-00008.tfrecord: record of "),
])
def test_records_that_do_not_fit_the_flags_end_in_one_line_and_write_nothing(
        tiny_records, scale_records, mixed_records, tmp_path, capsys, records, flags, problem):
    records = {"tiny": tiny_records, "scale": scale_records, "mixed": mixed_records}[records]
    run_dir = tmp_path / "run"
    assert main(["--records", str(records), "--run-dir", str(run_dir), *flags]) == 1
    error = capsys.readouterr().err
    assert error.startswith("train: error: " + problem.format(records=records)) and error.count("\n") == 1
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- the train step (in process)
class NoAugmentation(keras.layers.Layer):
    """Casts as SegmentationAugmentation does and changes nothing, so two train steps can be compared."""

    def call(self, images, masks, training=True):
        return keras.ops.cast(images, "float32"), keras.ops.cast(masks, "float32")


class CountingNoAugmentation(NoAugmentation):
    """NoAugmentation that counts the batches it is called on."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batches = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False, name="batches")

    def call(self, images, masks, training=True):
        self.batches.assign_add(1)
        return super().call(images, masks, training=training)


def one_stone(size=64):
    """One synthetic photo (a bright disk on noise) and its mask, as uint8 batches of one."""
    rows, cols = np.mgrid[:size, :size]
    mask = ((rows - size * 0.47) ** 2 + (cols - size * 0.56) ** 2 < (size * 0.28) ** 2).astype(np.uint8)
    noise = np.random.default_rng(0).normal(0, 20, (size, size, 3))
    image = np.clip(60 + 120 * mask[..., None] + noise, 0, 255).astype(np.uint8)
    return image[None], mask[None, ..., None]


def trainer_for(network, augmentation, optimizer, jit_network=False):
    trainer = SegmentationTrainer(network, augmentation, jit_network=jit_network)
    trainer.compile(optimizer=optimizer, loss=make_loss("bce"), metrics=training_metrics(), jit_compile=False)
    trainer.build((None, *network.input_shape[1:]))
    return trainer


def test_a_mixed_precision_step_moves_the_weights_as_a_float32_step_does(mixed_float16):
    """--precision float16: float16 compute with loss scaling. From the same weights, one SGD step of the
    trainer moves the float32 head kernel by -lr x its float32 gradient, to float16 precision; without the
    loss scaling the unscaled gradients would move it 2**15 times less."""
    images, masks = one_stone(32)
    network = build_unet((32, 32, 3))
    trainer = trainer_for(network, NoAugmentation(), keras.optimizers.SGD(0.1))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert network.get_layer("head_conv").compute_dtype == "float16"
    keras.mixed_precision.set_global_policy("float32")
    reference = build_unet((32, 32, 3))
    reference.set_weights(network.get_weights())
    kernel = reference.get_layer("head_conv").kernel
    with tf.GradientTape() as tape:
        loss = keras.losses.BinaryCrossentropy()(masks.astype(np.float32), reference(images, training=True))
    expected = -0.1 * tape.gradient(loss, kernel).numpy()

    before = network.get_layer("head_conv").kernel.numpy()
    trainer.fit(images, masks, batch_size=1, epochs=1, verbose=0)
    moved = network.get_layer("head_conv").kernel.numpy() - before
    assert np.abs(expected).max() > 1e-4  # the step really moves this kernel
    np.testing.assert_allclose(moved, expected, rtol=0.05, atol=0.02 * np.abs(expected).max())


def test_the_xla_compiled_network_overfits_one_image_augmented_in_the_train_step_only():
    """jit_network=True (train's --jit): the network's forward and backward pass under XLA. A few dozen Adam
    steps on one synthetic stone halve the loss. The trainer calls its augmentation once per train step
    and never when validating."""
    keras.utils.set_random_seed(0)
    images, masks = one_stone(64)
    augmentation = CountingNoAugmentation()
    trainer = trainer_for(build_unet((64, 64, 3)), augmentation, keras.optimizers.Adam(1e-3), jit_network=True)
    losses = trainer.fit(images, masks, epochs=30, batch_size=1, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] <= losses[0] / 2, f"loss went from {losses[0]:.4f} to {losses[-1]:.4f}"
    trainer.evaluate(images, masks, verbose=0)
    assert int(augmentation.batches.numpy()) == 30


class HostOnly(keras.layers.Layer):
    """Adds zeros computed on the host by NumPy (tf.numpy_function): an op XLA has no kernel for."""

    def call(self, x):
        zeros = tf.numpy_function(lambda array: np.zeros_like(array), [x], x.dtype, stateful=False)
        return x + tf.stop_gradient(tf.ensure_shape(zeros, x.shape))


@pytest.mark.parametrize("jit_network", [False, True], ids=["eager graph", "XLA"])
def test_jit_network_really_compiles_the_networks_step_with_xla(jit_network):
    """The overfit test above passes with or without XLA; this one tells them apart: a network holding an op
    that XLA cannot compile trains without jit_network and is refused by XLA with it."""
    images, masks = one_stone(32)
    inputs = keras.Input((32, 32, 3))
    network = keras.Model(inputs, keras.layers.Activation("sigmoid")(HostOnly()(keras.layers.Conv2D(1, 1)(inputs))))
    trainer = trainer_for(network, NoAugmentation(), keras.optimizers.SGD(0.1), jit_network=jit_network)
    if not jit_network:
        trainer.fit(images, masks, batch_size=1, epochs=1, verbose=0)
        return
    with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported operations when trying to compile"):
        trainer.fit(images, masks, batch_size=1, epochs=1, verbose=0)
