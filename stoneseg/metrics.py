"""How masks are scored in training: the losses and the thresholded stone-class metrics.

Every loss and both metrics take Keras' `sample_weight` as per-pixel weights [B,H,W,1] of 0 and 1:
`train --crop` gives padding weight 0, and a pixel of weight 0 counts in neither a loss nor a metric.
A model with a second output (`train --output boundary|distance`) has a loss per output; Keras logs each
as `<output>_loss` beside their sum, `loss`.
"""

import keras
from keras import ops

from stoneseg.choices import LOSSES, OUTPUTS


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
    """Binary cross-entropy plus the soft Dice loss of each mask, averaged over the masks.

    With per-pixel `sample_weight` (0 or 1), each mask's cross-entropy is the mean over its pixels of
    weight 1, and its Dice is over those pixels alone: sum(w·t·p) against sum(w·t) + sum(w·p).
    """

    def __init__(self, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce = keras.losses.BinaryCrossentropy(reduction=None)
        self.dice = keras.losses.Dice(reduction=None, axis=(1, 2, 3))

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras would apply sample_weight to the per-mask values call() returns; the weights are per
        # pixel, so they travel with y_true into call() instead.
        if sample_weight is None:
            return super().__call__(y_true, y_pred)
        return super().__call__((y_true, sample_weight), y_pred)

    def call(self, y_true, y_pred):
        if not isinstance(y_true, (tuple, list)):
            return ops.mean(self.bce(y_true, y_pred), axis=(1, 2)) + self.dice(y_true, y_pred)
        y_true, weights = y_true
        pixel_bce = self.bce(y_true, y_pred) * weights[..., 0]
        bce = ops.divide_no_nan(ops.sum(pixel_bce, axis=(1, 2)), ops.sum(weights, axis=(1, 2, 3)))
        return bce + self.dice(y_true * weights, y_pred * weights)


def make_loss(name):
    """The training loss called `name` (one of LOSSES)."""
    if name == "bce":
        # The mean over pixels of weight 1 (without weights: over all pixels, as Keras' default).
        return keras.losses.BinaryCrossentropy(name="bce", reduction="mean_with_sample_weight")
    if name == "bce_dice":
        return BceDiceLoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def make_losses(name, output="binary"):
    """The losses of a model with `output` (stoneseg.choices.OUTPUTS): the stone probability's is the one
    called `name`; a second output's is binary cross-entropy against its target (the boundary band's 0/1,
    or the normalised distance in [0, 1] as a soft target, whose gradient on the logit is prediction -
    target, as least squares' is on the value). One loss for "binary", else a list in output order."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")
    if output == "binary":
        return make_loss(name)
    return [make_loss(name), keras.losses.BinaryCrossentropy(name=f"{output}_bce", reduction="mean_with_sample_weight")]


def training_metrics(threshold=0.5):
    """Thresholded IoU and Dice of the stone class, logged as `iou` and `dice`."""
    return [
        keras.metrics.BinaryIoU(target_class_ids=[1], threshold=threshold, name="iou"),
        BinaryDice(threshold=threshold, name="dice"),
    ]
