"""Named recipes: what each resolves to, flags that override them, the schedule they build, and what early
stopping and the best checkpoint follow."""

import math

import keras
import pytest

from stoneseg import recipes
from stoneseg.callbacks import ResumableEarlyStopping, best_epoch
from stoneseg.train import parse_args, run_callbacks

# What train did before recipes existed: the prototype's recipe, every value spelled out.
PROTOTYPE = {"lr": 1e-3, "schedule": "constant", "warmup_epochs": 0, "weight_decay": 0.0, "loss": "bce",
             "batch_size": 4, "epoch_images": 240, "bn_momentum": 0.99, "monitor": "val_loss", "patience": 5}


def settings_of(args):
    return {name: getattr(args, name) for name in recipes.SETTINGS}


def test_the_default_and_the_prototype_recipe_are_todays_values():
    assert settings_of(parse_args([])) == settings_of(parse_args(["--recipe", "prototype"])) == PROTOTYPE
    optimizer = recipes.make_optimizer(PROTOTYPE, epochs=50, steps_per_epoch=60)
    assert type(optimizer) is keras.optimizers.Adam  # not AdamW
    assert float(optimizer.learning_rate) == pytest.approx(1e-3, rel=1e-6)
    optimizer.iterations.assign(2000)  # constant: no schedule moves it
    assert float(optimizer.learning_rate) == pytest.approx(1e-3, rel=1e-6)


def test_flags_override_the_recipe_and_the_rest_stays():
    args = parse_args(["--recipe", "cosine", "--lr", "5e-4", "--loss", "bce", "--patience", "3", "--bn-momentum", "0.99"])
    expected = {**vars(recipes.RECIPES["cosine"]), "lr": 5e-4, "loss": "bce", "patience": 3, "bn_momentum": 0.99}
    assert settings_of(args) == expected
    assert recipes.resolve("cosine", {"lr": 5e-4, "loss": "bce", "monitor": None})[1] == ["loss", "lr"]
    # A flag that repeats the recipe's own value is not an override.
    assert recipes.resolve("cosine", {"loss": "bce_dice"})[1] == []


@pytest.mark.parametrize("flags, problem", [
    (["--lr", "0"], "--lr must be above 0"),
    (["--bn-momentum", "1"], "--bn-momentum in [0, 1)"),
    (["--recipe", "fast"], "argument --recipe: invalid choice: 'fast'"),
    (["--monitor", "val_dice"], "argument --monitor: invalid choice: 'val_dice'"),
])
def test_bad_recipe_flags_end_in_one_line(flags, problem, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(flags)
    assert stopped.value.code == 2
    assert problem in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_cosine_schedule_warms_up_over_one_epoch_and_ends_at_one_percent_of_its_peak():
    settings, _ = recipes.resolve("cosine", {"lr": 2e-3})
    schedule = recipes.learning_rate(settings, epochs=10, steps_per_epoch=60)  # 600 steps, warm-up 60
    expected = {
        0: 0.0,
        30: 1e-3,  # halfway up the linear warm-up
        60: 2e-3,  # the peak, at the end of the first epoch
        330: 2e-3 * (0.01 + 0.99 * 0.5),  # halfway down the cosine
        600: 2e-3 * 0.01,  # the run's last step
    }
    for step, rate in expected.items():
        assert float(schedule(step)) == pytest.approx(rate, rel=1e-5, abs=1e-9), step
    # The cosine in between: step 60 + 540/3 is a third of the way down.
    assert float(schedule(240)) == pytest.approx(2e-3 * (0.01 + 0.99 * (1 + math.cos(math.pi / 3)) / 2), rel=1e-5)


def test_the_cosine_recipe_trains_with_adamw_on_the_schedule():
    settings, _ = recipes.resolve("cosine", {})
    optimizer = recipes.make_optimizer(settings, epochs=4, steps_per_epoch=10)
    assert type(optimizer) is keras.optimizers.AdamW and optimizer.weight_decay == pytest.approx(0.004)
    optimizer.iterations.assign(10)  # the end of the warm-up
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
    optimizer.iterations.assign(40)
    assert float(optimizer.learning_rate) == pytest.approx(1e-5)


@pytest.mark.parametrize("recipe, monitor, better", [("prototype", "val_loss", "less"), ("cosine", "val_iou", "greater")])
def test_early_stopping_and_the_best_checkpoint_follow_the_recipes_monitor(recipe, monitor, better, tmp_path):
    callbacks = run_callbacks(parse_args(["--recipe", recipe]), tmp_path, [])
    stopping, = [callback for callback in callbacks if isinstance(callback, ResumableEarlyStopping)]
    checkpoint, = [callback for callback in callbacks if isinstance(callback, keras.callbacks.ModelCheckpoint)]
    stopping._set_monitor_op(), checkpoint._set_monitor_op()
    assert stopping.monitor == checkpoint.monitor == monitor
    assert stopping.patience == recipes.RECIPES[recipe].patience
    assert stopping.monitor_op.__name__ == checkpoint.monitor_op.__name__ == better


def test_a_resumed_checkpoint_must_beat_the_best_val_iou_so_far(tmp_path):
    history = [{"epoch": 0, "val_loss": 0.3, "val_iou": 0.6}, {"epoch": 1, "val_loss": 0.4, "val_iou": 0.8}]
    callbacks = run_callbacks(parse_args(["--recipe", "cosine"]), tmp_path, history)
    checkpoint, = [callback for callback in callbacks if isinstance(callback, keras.callbacks.ModelCheckpoint)]
    assert checkpoint.best == 0.8  # the highest val_iou, not the row of the lowest val_loss


def test_the_best_epoch_is_the_highest_val_iou_in_max_mode():
    history = [{"epoch": 0, "val_loss": 0.2, "val_iou": 0.5}, {"epoch": 1, "val_loss": 0.3, "val_iou": 0.7},
               {"epoch": 2, "val_loss": 0.4, "val_iou": 0.7}]
    assert best_epoch(history)["epoch"] == 0  # val_loss, lowest
    assert best_epoch(history, "val_iou", "max")["epoch"] == 1  # the first of the highest


def test_resumed_early_stopping_on_val_iou_counts_from_the_highest(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,val_loss,val_iou\n0,0.2,0.5\n1,0.3,0.7\n2,0.25,0.6\n")
    stopping = ResumableEarlyStopping(history, monitor="val_iou", mode="max", patience=5)
    stopping.on_train_begin()
    assert (stopping.best, stopping.best_epoch, stopping.wait) == (0.7, 1, 1)


def test_help_names_every_recipe_and_its_settings(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--recipe {cosine,prototype}" in text
    for flag in ("--schedule", "--warmup-epochs", "--weight-decay", "--bn-momentum", "--monitor"):
        assert flag in text
    # The recipes' values, not argparse's "(default: None)" of a flag the recipe fills in.
    assert "momentum; recipe's: prototype 0.99, cosine 0.9 --monitor" in text

