"""Training callbacks beyond Keras' own: validation images in TensorBoard, and early stopping that
picks up a resumed run's count from its `history.csv`."""

import csv
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def read_history(path):
    """The rows of a CSVLogger file as dicts of floats, one per epoch (the last row wins when a
    killed run logged an epoch whose backup it did not finish); [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        rows = {int(row["epoch"]): {key: float(value) for key, value in row.items()} for row in csv.DictReader(file)}
    return [rows[epoch] for epoch in sorted(rows)]


def best_epoch(history, monitor="val_loss"):
    """The history row with the lowest `monitor`, or None."""
    rows = [row for row in history if monitor in row]
    return min(rows, key=lambda row: row[monitor]) if rows else None


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best value and patience count continue from `history_csv` on resume."""

    def __init__(self, history_csv, **kwargs):
        super().__init__(**kwargs)
        self.history_csv = history_csv

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        history = read_history(self.history_csv)
        best = best_epoch(history, self.monitor)
        if best is not None:
            self.best = best[self.monitor]
            self.best_epoch = int(best["epoch"])
            self.wait = int(history[-1]["epoch"]) - self.best_epoch


class ValidationImages(keras.callbacks.Callback):
    """After each epoch, write `photo | true mask | predicted mask` for fixed validation photos as a
    TensorBoard image summary."""

    def __init__(self, log_dir, images, masks, threshold=0.5):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(log_dir))
        self.images = np.asarray(images, np.uint8)
        self.masks = np.asarray(masks, np.uint8)
        self.threshold = threshold

    def on_epoch_end(self, epoch, logs=None):
        # One photo at a time: whole scale records can be large, and a batch of them would need the
        # network's activations for all of them at once.
        probabilities = np.concatenate(
            [keras.ops.convert_to_numpy(self.model(image[None], training=False)) for image in self.images]
        )
        predicted = (probabilities >= self.threshold).astype(np.uint8)
        panels = np.concatenate([self.images, _as_rgb(self.masks), _as_rgb(predicted)], axis=2)
        with self.writer.as_default():
            tf.summary.image(
                "validation/photo_truth_prediction",
                panels,
                step=epoch,
                max_outputs=len(panels),
                description="Fixed validation photos: photo | true mask | predicted mask.",
            )
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()


def _as_rgb(masks):
    """{0, 1} masks [N,H,W,1] as white-on-black uint8 RGB."""
    return np.repeat(masks * 255, 3, axis=-1).astype(np.uint8)
