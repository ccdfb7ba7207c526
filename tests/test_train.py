"""`python -m stoneseg.train` end to end on tiny records: strategies, run folder, TensorBoard, resume."""

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
from stoneseg.callbacks import read_history
from stoneseg.model import model_scale
from stoneseg.train import _run_arguments, find_run_dir, main, parse_args, training_crop

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--val-images", "2"]


def train_command(records, run_dir, *extra):
    return [sys.executable, "-m", "stoneseg.train", "--records", str(records), "--run-dir", str(run_dir), *extra]


def run_train(records, run_dir, *extra, env=None):
    result = subprocess.run(
        train_command(records, run_dir, *extra), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, result.stderr


@pytest.fixture(scope="module")
def mirrored_run(tiny_records, tmp_path_factory):
    """The run folder, stdout and stderr of a short mirrored run, started as a user would (output to a pipe)."""
    run_dir = tmp_path_factory.mktemp("runs") / "mirrored"
    return run_dir, *run_train(tiny_records, run_dir, "--strategy", "mirrored", *QUICK)


def test_mirrored_trains_end_to_end_on_cpu(mirrored_run, tiny_records):
    run_dir, stdout, _ = mirrored_run
    assert "strategy mirrored (MirroredStrategy): 1 replica(s)" in stdout and "global batch 2" in stdout
    assert "best epoch" in stdout and str(run_dir / "best.keras") in stdout
    model = keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    assert model.name == "unet_resnet18" and model.input_shape == (None, 64, 64, 3)
    probabilities = model.predict(np.zeros((1, 64, 64, 3), np.uint8), verbose=0)
    assert probabilities.shape == (1, 64, 64, 1)
    history = read_history(run_dir / "history.csv")
    assert [row["epoch"] for row in history] == [0, 1]
    assert {"loss", "iou", "dice", "val_loss", "val_iou", "val_dice"} <= set(history[0])
    assert not (run_dir / "backup").exists()  # a finished run leaves no backup


def test_config_records_arguments_versions_and_manifest_hash(mirrored_run, tiny_records):
    run_dir, *_ = mirrored_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arguments"]["strategy"] == "mirrored" and config["arguments"]["lr"] == 1e-3
    assert config["arguments"]["loss"] == "bce" and config["arguments"]["patience"] == 5
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
    for scalar in ("epoch_loss", "epoch_iou", "epoch_dice"):
        assert len(tags["train"][scalar]) == 2 and len(tags["validation"][scalar]) == 2
    assert set(tags["train"]) == {"epoch_loss", "epoch_iou", "epoch_dice", "epoch_learning_rate"}  # as the README lists
    assert set(tags["validation"]) == {"epoch_loss", "epoch_iou", "epoch_dice", "evaluation_loss_vs_iterations",
                                       "evaluation_iou_vs_iterations", "evaluation_dice_vs_iterations"}
    images = tags["images"]["validation/photo_truth_prediction"]
    assert len(images) == 2  # one per epoch
    # Each image summary holds the photos as PNGs, photo | truth | prediction side by side.
    panel = tf.io.decode_png(tf.make_ndarray(images[0].tensor)[2]).numpy()
    assert panel.shape == (64, 3 * 64, 3)
    truth = panel[:, 64:128]
    assert set(np.unique(truth)) <= {0, 255}


def test_a_killed_run_resumes_from_its_backup(tiny_records, tmp_path):
    run_dir = tmp_path / "run"
    command = train_command(tiny_records, run_dir, "--strategy", "default", "--epochs", "4", "--steps-per-epoch", "2",
                            "--batch-size", "2", "--patience", "10")
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metadata = run_dir / "backup" / "training_metadata.json"  # BackupAndRestore's record of the last epoch
    deadline = time.time() + 240
    while not metadata.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(metadata.read_text())["epoch"]
    assert 1 <= done < 4, "killed after the first epoch, before the last"

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming {run_dir} from its backup" in result.stdout
    assert "Epoch 1/4" not in result.stdout and f"Epoch {done + 1}/4" in result.stdout
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == [0, 1, 2, 3]
    assert (run_dir / "best.keras").is_file() and not (run_dir / "backup").exists()


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


def test_strategy_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="unknown strategy 'gpu'"):
        distribute.resolve_strategy("gpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.resolve_strategy("multi_worker")


def test_help_lists_the_recipe_defaults():
    result = subprocess.run([sys.executable, "-m", "stoneseg.train", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--strategy", "--loss", "--lr", "--epochs", "--batch-size", "--mixed-precision", "--jit", "--no-jit"):
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
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("2/2 - ")]
    assert len(epoch_lines) == 2 and all("val_loss: " in line for line in epoch_lines)


def test_a_finished_run_folder_is_not_trained_again(mirrored_run, tiny_records):
    run_dir, *_ = mirrored_run
    before = (run_dir / "best.keras").read_bytes()
    result = subprocess.run(train_command(tiny_records, run_dir, "--strategy", "mirrored", *QUICK),
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "holds a finished run (2 epochs)" in result.stderr
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
