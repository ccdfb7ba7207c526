"""Every command, run as a user runs it: an ordinary mistake ends in one `prog: error: ...` line and a
non-zero status, never a traceback; `--help` answers without importing TensorFlow; TensorFlow's start-up
notices are dropped; progress is plain lines when stdout is not a terminal; a damaged shard is named."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from keras import layers

from stoneseg import cli

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"tools.build_records": "build_records", "tools.make_sample": "make_sample", "stoneseg.train": "train",
            "stoneseg.predict": "predict", "stoneseg.evaluate": "evaluate", "stoneseg.export": "export"}


def run(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def the_error_line(result, module):
    """The one error line of a failed command; everything else it printed on stderr is argparse's usage."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = result.stderr.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], output
    if result.returncode == 2:  # argparse: usage, then `python -m module: error: ...`
        assert lines[0].startswith("usage: ") and errors[0].startswith(f"python -m {module}: error: "), output
    else:
        assert result.returncode == 1 and lines == errors, output  # nothing else on stderr
        assert errors[0].startswith(f"{COMMANDS[module]}: error: "), output
    return errors[0]


def flip_a_byte(path):
    """Flip every bit of the byte in the middle of `path`: inside a record, where TFRecord's CRC sees it."""
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_records):
    """Things to get wrong: a missing path, an empty folder, a text file, records with a damaged shard."""
    root = tmp_path_factory.mktemp("mistakes")
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a photo, a model or a manifest\n")
    (root / "notes.jpg").write_text("a text file named like a photo\n")
    (root / "bad-manifest").mkdir()
    (root / "bad-manifest" / "manifest.json").write_text("{ not json")
    (root / "old-manifest").mkdir()
    (root / "old-manifest" / "manifest.json").write_text(json.dumps({"format_version": 1}))
    damaged = root / "damaged"
    shutil.copytree(tiny_records, damaged)
    flip_a_byte(damaged / "train-00003-of-00008.tfrecord")
    flip_a_byte(damaged / "val-00001-of-00002.tfrecord")
    truncated = root / "truncated"
    shutil.copytree(tiny_records, truncated)
    (truncated / "val-00000-of-00002.tfrecord").write_bytes((tiny_records / "val-00000-of-00002.tfrecord").read_bytes()[:100])
    images = keras.Input((64, 64, 3))
    keras.Model(images, layers.Conv2D(1, 1, activation="sigmoid")(images)).save(root / "model64.keras")
    return root


# Each: the command and its arguments ({name} = a path in `places`), and what its error line must say.
MISTAKES = {
    "build_records, missing input": ("tools.build_records", "--data {missing} --out {new}", "{missing} does not exist"),
    "build_records, empty input": ("tools.build_records", "--data {empty} --out {new}", "no photos in {empty}"),
    "build_records, out is a file": ("tools.build_records", "--data {empty} --out {notes.txt}", "is a file"),
    "build_records, bad size": ("tools.build_records", "--size 0", "--size takes one or two positive integers"),
    "build_records, bad scale": ("tools.build_records", "--scale 1.5", "--scale 1.5 must be in (0, 1]"),
    "build_records, size and scale": ("tools.build_records", "--size 64 --scale 0.5", "are two modes"),
    "build_records, bad fraction": ("tools.build_records", "--val-fraction 1.5", "--val-fraction"),
    "make_sample, out is a file": ("tools.make_sample", "--out {notes.txt} --count 1", "not a folder"),
    "make_sample, bad count": ("tools.make_sample", "--count 0", "--count and --workers must be at least 1"),
    "make_sample, bad size": ("tools.make_sample", "--width 8", "at least 16 pixels"),
    "train, missing records": ("stoneseg.train", "--records {missing}", "{missing}/manifest.json: no manifest"),
    "train, empty records folder": ("stoneseg.train", "--records {empty}", "{empty}/manifest.json: no manifest"),
    "train, records is a file": ("stoneseg.train", "--records {notes.txt}", "is a file, not a folder of records"),
    "train, manifest not JSON": ("stoneseg.train", "--records {bad-manifest}", "not a records manifest"),
    "train, older records": ("stoneseg.train", "--records {old-manifest}", "records format version 1"),
    "train, damaged shards": ("stoneseg.train", "--records {damaged}",
                              "{damaged}/train-00003-of-00008.tfrecord is damaged"),
    "train, truncated shard": ("stoneseg.train", "--records {truncated}",
                               "{truncated}/val-00000-of-00002.tfrecord is 100 bytes"),
    "train, wrong image size": ("stoneseg.train", "--records {tiny_records} --image-size 32", "are squash 64x64"),
    "train, bad epochs": ("stoneseg.train", "--epochs 0", "--epochs must be at least 1"),
    "train, bad crop": ("stoneseg.train", "--crop 48", "--crop 48 is not a positive multiple of 32"),
    "train, crop larger than the records": ("stoneseg.train", "--records {tiny_records} --crop 96",
                                            "--crop 96 is larger than the records"),
    "train, bad strategy": ("stoneseg.train", "--strategy gpu", "invalid choice: 'gpu'"),
    "predict, missing model": ("stoneseg.predict", "{missing} {empty} --out {new}", "{missing}: no such model file"),
    "predict, text file as model": ("stoneseg.predict", "{notes.txt} {empty} --out {new}", "not a Keras model file"),
    "predict, missing photo": ("stoneseg.predict", "{model64.keras} {missing} --out {new}", "no such file or folder"),
    "predict, no photos": ("stoneseg.predict", "{model64.keras} {empty} --out {new}", "no photos in {empty}"),
    "predict, out is a file": ("stoneseg.predict", "{model64.keras} {notes.jpg} --out {notes.txt}", "is a file"),
    "predict, bad threshold": ("stoneseg.predict", "m.keras x.jpg --out o --threshold 2", "--threshold"),
    "predict, bad tile": ("stoneseg.predict", "m.keras x.jpg --out o --tile 100", "multiple of 32"),
    "predict, bad percentiles": ("stoneseg.predict", "m.keras x.jpg --out o --percentiles 50,100",
                                 "--percentiles: 100 is not strictly between 0 and 100"),
    "predict, bad ci": ("stoneseg.predict", "m.keras x.jpg --out o --ci 95", "--ci must be strictly between 0 and 1"),
    "evaluate, missing model": ("stoneseg.evaluate", "{missing} --records {tiny_records} --out {new}", "no such model"),
    "evaluate, text file as model": ("stoneseg.evaluate", "{notes.txt} --records {tiny_records} --out {new}",
                                     "not a Keras model file"),
    "evaluate, missing records": ("stoneseg.evaluate", "{model64.keras} --records {missing} --out {new}",
                                  "no manifest"),
    "evaluate, missing split": ("stoneseg.evaluate", "{model64.keras} --records {tiny_records} --split test "
                                "--out {new}", "no 'test' split"),
    "evaluate, damaged shard": ("stoneseg.evaluate", "{model64.keras} --records {damaged} --out {new}",
                                "{damaged}/val-00001-of-00002.tfrecord is damaged"),
    "evaluate, missing data": ("stoneseg.evaluate", "{model64.keras} --data {missing} --out {new}", "does not exist"),
    "evaluate, empty data": ("stoneseg.evaluate", "{model64.keras} --data {empty} --out {new}", "no photo/mask pairs"),
    "evaluate, report exists": ("stoneseg.evaluate", "{model64.keras} --data {empty} --out {empty}", "exists"),
    "evaluate, bad threshold": ("stoneseg.evaluate", "m.keras --data d --threshold -1", "--threshold"),
    "export, text file as model": ("stoneseg.export",
                                   "{notes.txt} --format saved_model --out {new} --photo {notes.jpg}",
                                   "{notes.txt}: not a Keras model file"),
    "export, unknown format": ("stoneseg.export", "m.keras --format tensorrt --out o --photo p.jpg",
                               "invalid choice: 'tensorrt'"),
    "export, bad input size": ("stoneseg.export",
                               "m.keras --format litert --out o.tflite --photo p.jpg --input-size 100",
                               "--input-size 100x100: each side must be a positive multiple of 32"),
    "export, out exists": ("stoneseg.export", "{model64.keras} --format saved_model --out {empty} --photo {notes.jpg}",
                           "{empty} exists; pass --overwrite"),
    "export, missing photo": ("stoneseg.export", "{model64.keras} --format saved_model --out {new} --photo {missing}",
                              "{missing}: no such photo"),
}


def fill(text, places, tiny_records):
    names = {"missing": places / "missing", "new": places / "new", "tiny_records": tiny_records,
             **{path.name: path for path in places.iterdir()}}
    for name, path in names.items():
        text = text.replace(f"{{{name}}}", str(path))
    return text


@pytest.mark.parametrize("case", MISTAKES)
def test_an_ordinary_mistake_ends_in_one_error_line(case, places, tiny_records):
    """Each of these is caught before any work starts (nothing on stdout: no "Decoding", "strategy",
    "Predicting" or "Evaluating" line) and before TensorFlow loads, so each answers within a second."""
    module, arguments, expected = MISTAKES[case]
    result = run(module, *fill(arguments, places, tiny_records).split())
    assert fill(expected, places, tiny_records) in the_error_line(result, module)
    assert result.stdout == "" and not (places / "new").exists()


def test_a_text_file_given_as_a_photo_is_named_once_and_nothing_is_written(places):
    """Predict loads TensorFlow for this one, so its stderr also shows that TensorFlow's start-up notices
    (oneDNN, "Could not find cuda drivers", cuInit) are gone: nothing but the two error lines is there."""
    result = run("stoneseg.predict", places / "model64.keras", places / "notes.jpg", "--out", places / "new")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr  # the photo's own line, then the command's
    assert lines[0].startswith(f"predict: error: {places / 'notes.jpg'}: ")
    assert lines[1].startswith("predict: error: none of the 1 photo(s) could be predicted")
    assert not (places / "new").exists()


def rebuild(places, tiny_photos):
    return (f"Rebuild the records: python -m tools.build_records --data {tiny_photos} --out {places / 'damaged'} "
            "--size 64 --boundary-width 1 --val-fraction 0.2 --test-fraction 0.0 --seed 42 --overwrite")


def test_a_damaged_shard_found_while_training_is_named(places, tiny_photos):
    """With --skip-hash the start-up check reads sizes only, so TensorFlow meets the flipped byte (a
    DataLossError at a record offset, naming no file); the error line still names the shard."""
    result = run("stoneseg.train", "--records", places / "damaged", "--run-dir", places / "run", "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--skip-hash")
    line = the_error_line(result, "stoneseg.train")
    assert f"{places / 'damaged' / 'train-00003-of-00008.tfrecord'} is damaged" in line
    assert line.endswith(rebuild(places, tiny_photos))


def test_a_damaged_shard_found_while_evaluating_is_named(places, tiny_photos, capsys):
    from stoneseg import evaluate

    status = evaluate.main([str(places / "model64.keras"), "--records", str(places / "damaged"),
                            "--out", str(places / "report"), "--skip-hash"])
    error = capsys.readouterr().err
    assert status == 1 and error.count("evaluate: error:") == 1
    assert f"{places / 'damaged' / 'val-00001-of-00002.tfrecord'} is damaged" in error
    assert error.rstrip().endswith(rebuild(places, tiny_photos))
    assert not (places / "report").exists()


@pytest.mark.parametrize("module", COMMANDS)
def test_help_answers_without_importing_tensorflow(module):
    code = (f"import runpy, sys\nsys.argv = ['{module}', '--help']\n"
            f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("usage: python -m " + module)
    assert result.stderr == "False False\n"


def test_only_the_start_up_notices_are_dropped():
    code = ("import os\nfrom stoneseg import cli\nwith cli._start_up_notices_dropped():\n"
            "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
            "    os.write(2, b'I0000 00:00:17.1 6 port.cc:153] oneDNN custom operations are on. You may see...\\n')\n"
            "    os.write(2, b'a line of our own\\n')\n"
            "    os.write(2, b'E0000 00:00:17.2 6 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\\n')\n"
            "    os.write(2, b'E0000 00:00:17.3 6 some_op.cc:1] a real error\\n')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stderr == "a line of our own\nE0000 00:00:17.3 6 some_op.cc:1] a real error\n"


def test_progress_is_a_plain_line_for_each_tenth(capsys):
    progress = cli.Progress(25, "photo", "predict")
    for _ in range(25):
        progress.add()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"predict: {done}/25 photos"
                                                      for done in (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]
    assert all("\x1b" not in line and "\r" not in line for line in lines)


def test_a_command_turns_input_and_os_errors_into_one_line(capsys):
    @cli.command("tool")
    def main(argv=None):
        if argv == ["input"]:
            raise cli.InputError("the input is wrong")
        if argv == ["os"]:
            Path("/nonexistent/folder/file").read_text()
        raise RuntimeError("a bug is not an ordinary mistake")

    assert main(["input"]) == 1 and capsys.readouterr().err == "tool: error: the input is wrong\n"
    assert main(["os"]) == 1
    assert capsys.readouterr().err == "tool: error: /nonexistent/folder/file: No such file or directory\n"
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        main(["bug"])


def test_cores_are_the_ones_this_process_may_run_on():
    code = "import os\nfrom stoneseg import cli\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\nprint(cli.cores())"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout == "1\n", result.stderr  # one core allowed, whatever the machine has


def test_evaluate_and_build_records_show_plain_progress_in_a_log(places, tiny_photos, capsys):
    from stoneseg import evaluate
    from tools import build_records

    assert evaluate.main([str(places / "model64.keras"), "--data", str(tiny_photos), "--out",
                          str(places / "progress-report"), "--worst", "0"]) == 0
    assert build_records.main(["--data", str(tiny_photos), "--out", str(places / "progress-records"),
                               "--size", "16", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for prog in ("evaluate", "build_records"):
        lines = [line for line in out.splitlines() if line.startswith(f"{prog}: ")]
        assert [line.split(",")[0] for line in lines] == [f"{prog}: {done}/10 photos" for done in range(1, 11)]
    assert "\x1b" not in out and "\r" not in out
