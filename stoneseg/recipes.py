"""Training recipes by name (`train --recipe NAME`): the settings a run trains with unless a flag says
otherwise, and the optimizer and learning-rate schedule they describe.

- `prototype`: the notebook prototype's recipe, as train used it before recipes existed: Adam at a
  constant learning rate, binary cross-entropy, BatchNorm momentum 0.99, early stopping and the best
  checkpoint on the lowest `val_loss` with patience 5.
- `cosine`: a learning rate that warms up linearly from 0 over the first epoch, then falls along a cosine
  to 1 % of its peak at the run's last step (`--epochs` × steps per epoch, so the schedule fits the run);
  AdamW's decoupled weight decay; BatchNorm momentum 0.9, so the moving statistics that validation uses
  follow the weights within ~10 steps of batch 4 instead of ~100; bce_dice; early stopping and the best
  checkpoint on the highest `val_iou`, the score the run is judged by.

The schedule is a function of the optimizer's step counter, which BackupAndRestore saves with the
weights, so a resumed run continues the schedule where it stopped.

No TensorFlow here at import: train checks its arguments against this module before TensorFlow loads.
"""

from dataclasses import asdict, dataclass

SCHEDULES = ("constant", "cosine")
MONITORS = {"val_loss": "min", "val_iou": "max"}  # what early stopping and best.keras may follow -> better is
COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of its peak learning rate


@dataclass(frozen=True)
class Recipe:
    """A run's training settings; each field is also a train flag of the same name (`--bn-momentum`)."""

    lr: float  # the constant rate, or the peak a schedule warms up to
    schedule: str  # one of SCHEDULES
    warmup_epochs: float  # linear warm-up from 0 (cosine schedule only)
    weight_decay: float  # AdamW's decoupled weight decay; 0: Adam
    loss: str  # one of choices.LOSSES
    batch_size: int  # per replica
    epoch_images: int  # augmented training images per epoch
    bn_momentum: float  # every BatchNormalization layer's moving-average momentum
    monitor: str  # one of MONITORS: early stopping and best.keras follow it
    patience: int  # epochs without a better `monitor` before early stopping


RECIPES = {
    "prototype": Recipe(lr=1e-3, schedule="constant", warmup_epochs=0, weight_decay=0.0, loss="bce", batch_size=4,
                        epoch_images=240, bn_momentum=0.99, monitor="val_loss", patience=5),
    "cosine": Recipe(lr=1e-3, schedule="cosine", warmup_epochs=1, weight_decay=0.004, loss="bce_dice", batch_size=4,
                     epoch_images=240, bn_momentum=0.9, monitor="val_iou", patience=10),
}
DEFAULT_RECIPE = "prototype"
SETTINGS = tuple(Recipe.__dataclass_fields__)


def resolve(name, overrides):
    """The settings of recipe `name` with every value of `overrides` (setting -> value) that is not None in
    place of the recipe's, and the names of the settings so overridden."""
    recipe = asdict(RECIPES[name])
    changed = sorted(key for key, value in overrides.items() if value is not None and value != recipe[key])
    return {key: recipe[key] if overrides.get(key) is None else overrides[key] for key in recipe}, changed


def describe(setting):
    """`setting`'s value in each recipe, for --help: "prototype 0.99, cosine 0.9"."""
    return ", ".join(f"{name} {getattr(recipe, setting)}" for name, recipe in RECIPES.items())


def learning_rate(settings, epochs, steps_per_epoch):
    """The learning rate of `settings` for a run of `epochs` epochs of `steps_per_epoch` steps: a float
    (constant), or a Keras schedule of the optimizer's step counter."""
    if settings["schedule"] == "constant":
        return settings["lr"]
    import keras

    total = epochs * steps_per_epoch
    warmup = min(round(settings["warmup_epochs"] * steps_per_epoch), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else settings["lr"],
        decay_steps=total - warmup,
        alpha=COSINE_FLOOR,
        warmup_target=settings["lr"] if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(settings, epochs, steps_per_epoch):
    """Adam, or AdamW when `settings` has a weight decay, on the settings' learning rate."""
    import keras

    rate = learning_rate(settings, epochs, steps_per_epoch)
    if settings["weight_decay"]:
        return keras.optimizers.AdamW(rate, weight_decay=settings["weight_decay"])
    return keras.optimizers.Adam(rate)
