"""Training callbacks beyond Keras' own: validation images in TensorBoard, and early stopping that
picks up a resumed run's count from its `history.csv`."""

import csv
import io
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from stoneseg.files import write_atomically


def read_history(path):
    """The rows of a CSVLogger file as dicts of floats, one per epoch (the last row wins should an
    epoch appear twice); [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        rows = {int(row["epoch"]): {key: float(value) for key, value in row.items()} for row in csv.DictReader(file)}
    return [rows[epoch] for epoch in sorted(rows)]


def backed_up_epochs(backup_dir):
    """How many epochs the BackupAndRestore backup in `backup_dir` holds (0 when it holds none)."""
    metadata = Path(backup_dir) / "training_metadata.json"  # BackupAndRestore's own record
    return int(json.loads(metadata.read_text())["epoch"]) if metadata.is_file() else 0


def trim_history(path, epochs):
    """Keep only the rows of the first `epochs` epochs in the CSVLogger file `path`; return how many
    rows were dropped.

    CSVLogger writes an epoch's row before BackupAndRestore backs the epoch up, so a run killed between
    the two has logged an epoch that its resumed run trains again; the resumed run must not take its
    best value or patience count from that row.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        fields = reader.fieldnames
    kept = [row for row in rows if int(row["epoch"]) < epochs]
    if len(kept) < len(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        write_atomically(path, text.getvalue().encode())
    return len(rows) - len(kept)


def best_epoch(history, monitor="val_loss", mode="min"):
    """The history row with the lowest (mode "min") or highest (mode "max") `monitor`, or None; the
    earliest such row on a tie, as ModelCheckpoint keeps it."""
    rows = [row for row in history if monitor in row]
    if not rows:
        return None
    return min(rows, key=lambda row: row[monitor]) if mode == "min" else max(rows, key=lambda row: row[monitor])


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best value and patience count continue from `history_csv` on resume: the
    epochs logged there are replayed through EarlyStopping's own rule (min_delta included), so a resumed
    run stops at the epoch where the uninterrupted run would have stopped."""

    def __init__(self, history_csv, **kwargs):
        super().__init__(**kwargs)
        self.history_csv = history_csv

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor_op is None:
            self._set_monitor_op()
        for row in read_history(self.history_csv):  # as on_epoch_end, without the stop
            if self.monitor not in row:
                continue
            self.wait += 1
            if self._is_improvement(row[self.monitor], self.best):
                self.best, self.best_epoch, self.wait = row[self.monitor], int(row["epoch"]), 0


class ValidationImages(keras.callbacks.Callback):
    """After each epoch, write `photo | true mask | predicted mask` for fixed validation photos as a
    TensorBoard image summary; for a network with a second output (`output`: "boundary" or "distance"),
    a second summary `true <output> | predicted <output>` beside it (grey levels 0..255 for 0..1)."""

    def __init__(self, log_dir, images, masks, output="binary", threshold=0.5):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(log_dir))
        self.images = np.asarray(images, np.uint8)
        self.masks = np.asarray(masks, np.uint8)  # [N,H,W,C]: the mask, then the second output's stored target
        self.output = output
        self.threshold = threshold

    def on_epoch_end(self, epoch, logs=None):
        # One photo at a time: whole scale records can be large, and a batch of them would need the
        # network's activations for all of them at once.
        outputs = [self.model(image[None], training=False) for image in self.images]
        outputs = [[keras.ops.convert_to_numpy(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
                   for out in outputs]
        predicted = (np.concatenate([out[0] for out in outputs]) >= self.threshold).astype(np.uint8)
        panels = np.concatenate([self.images, _as_rgb(self.masks[..., :1]), _as_rgb(predicted)], axis=2)
        with self.writer.as_default():
            tf.summary.image(
                "validation/photo_truth_prediction",
                panels,
                step=epoch,
                max_outputs=len(panels),
                description="Fixed validation photos: photo | true mask | predicted mask.",
            )
            if self.output != "binary":
                second = np.concatenate([out[1] for out in outputs])
                truth = self.masks[..., 1:2] * (255 if self.output == "boundary" else 1)  # distance is stored 0..255
                panels = np.concatenate([_grey_rgb(truth), _grey_rgb(np.rint(second * 255))], axis=2)
                tf.summary.image(
                    f"validation/{self.output}_truth_prediction",
                    panels,
                    step=epoch,
                    max_outputs=len(panels),
                    description=f"The same photos' {self.output} target | predicted {self.output} (black 0, white 1).",
                )
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()


def _as_rgb(masks):
    """{0, 1} masks [N,H,W,1] as white-on-black uint8 RGB."""
    return _grey_rgb(masks * 255)


def _grey_rgb(levels):
    """Grey levels 0..255 [N,H,W,1] as uint8 RGB."""
    return np.repeat(np.clip(levels, 0, 255), 3, axis=-1).astype(np.uint8)
