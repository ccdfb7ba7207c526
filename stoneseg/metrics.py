"""How masks are scored in training: the losses and the thresholded stone-class metrics."""

import keras
from keras import ops

from stoneseg.choices import LOSSES


@keras.saving.register_keras_serializable(package="stoneseg")
class BinaryDice(keras.metrics.BinaryIoU):
    """Dice (F1) of the stone class over all pixels seen, at `threshold`.

    Pooled Dice and pooled IoU come from the same counts: Dice = 2·IoU / (1 + IoU).
    """

    def __init__(self, threshold=0.5, name="dice", dtype=None):
        super().__init__(target_class_ids=[1], threshold=threshold, name=name, dtype=dtype)

    def result(self):
        iou = super().result()
        return 2.0 * iou / (1.0 + iou)

    def get_config(self):
        return {"threshold": self.threshold, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="stoneseg")
class BceDiceLoss(keras.losses.Loss):
    """Binary cross-entropy plus the soft Dice loss of each mask."""

    def __init__(self, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce = keras.losses.BinaryCrossentropy(reduction=None)
        self.dice = keras.losses.Dice(reduction=None, axis=(1, 2, 3))

    def call(self, y_true, y_pred):
        return ops.mean(self.bce(y_true, y_pred), axis=(1, 2)) + self.dice(y_true, y_pred)


def make_loss(name):
    """The training loss called `name` (one of LOSSES)."""
    if name == "bce":
        return keras.losses.BinaryCrossentropy(name="bce")
    if name == "bce_dice":
        return BceDiceLoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def training_metrics(threshold=0.5):
    """Thresholded IoU and Dice of the stone class, logged as `iou` and `dice`."""
    return [
        keras.metrics.BinaryIoU(target_class_ids=[1], threshold=threshold, name="iou"),
        BinaryDice(threshold=threshold, name="dice"),
    ]
