"""Train the UNet on the records: `python -m stoneseg.train --strategy mirrored`.

A named recipe (`--recipe`, stoneseg/recipes.py) sets the optimizer, learning-rate schedule, loss, batch,
epoch length, BatchNorm momentum and what early stopping and the best checkpoint follow; the default is
the prototype's (Adam 1e-3, binary cross-entropy, batch 4, early stopping on val_loss with patience 5
keeping the best weights), and a flag of the same name overrides one setting. The network is fed from the
shards with the rotate/flip augmentation drawn inside the train step. Squash records train whole; with `--crop N`
(required for scale records) each step trains on a random N×N crop of every record, drawn in the
train step too, and validation scores whole records. Everything a run writes goes to its run folder:
config.json, best.keras, history.csv, TensorBoard logs and a backup that a restarted run resumes from.
"""

import argparse
import hashlib
import json
import shutil
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

from stoneseg import cli, precision, recipes, records
from stoneseg.choices import BLOCKS_PER_STAGE, LOSSES, OUTPUT_STRIDE, OUTPUTS, PRECISIONS, STRATEGIES
from stoneseg.cli import InputError
from stoneseg.files import write_atomically
from stoneseg.records import MANIFEST

# TensorFlow and the modules that need it are imported in main(), once the arguments and the records
# have been checked: `--help` and an ordinary mistake answer at once, without TensorFlow's start-up.

PROG = "train"
BACKUP = "backup"
DEFAULT_SCALE_CROP = 256
DEFAULT_OUTPUT = "binary"
NOT_RUN_ARGUMENTS = ("run_dir", "skip_hash")  # a run resumed with other values is still the same run
PACKAGES = ("stoneseg", "tensorflow", "keras", "numpy", "opencv-python-headless", "scikit-learn")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m stoneseg.train",
        description="Train the stone-segmentation UNet on records built by `python -m tools.build_records`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--records", type=Path, default=Path("records"), help="folder with manifest.json and shards")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder; default runs/<timestamp>, or the unfinished run with the same arguments, which resumes",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto", help="tf.distribute strategy")
    parser.add_argument("--tpu", default="", help="TPU name or address for --strategy tpu")
    parser.add_argument("--epochs", type=int, default=50, help="maximum epochs (a schedule spans them all)")
    parser.add_argument(
        "--recipe",
        choices=sorted(recipes.RECIPES),
        default=recipes.DEFAULT_RECIPE,
        help="named training settings (docs/training.md: Recipes); each flag below that says 'recipe's' overrides one",
    )
    recipe = parser.add_argument_group("recipe settings (default: the --recipe's value)",
                                       argument_default=argparse.SUPPRESS)
    recipe.add_argument("--batch-size", type=int, help=f"batch size per replica; recipe's: {recipes.describe('batch_size')}")
    recipe.add_argument(
        "--epoch-images",
        type=int,
        help="augmented training images per epoch (at least one pass over the train photos); 240 is the "
        f"prototype's epoch, 80%% of its 300 augmented copies; recipe's: {recipes.describe('epoch_images')}",
    )
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="train steps per epoch; overrides --epoch-images")
    recipe.add_argument("--lr", type=float, help=f"learning rate (a schedule's peak); recipe's: {recipes.describe('lr')}")
    recipe.add_argument("--schedule", choices=recipes.SCHEDULES,
                        help=f"learning-rate schedule over the run; recipe's: {recipes.describe('schedule')}")
    recipe.add_argument("--warmup-epochs", type=float,
                        help=f"cosine: linear warm-up from 0; recipe's: {recipes.describe('warmup_epochs')}")
    recipe.add_argument("--weight-decay", type=float,
                        help=f"AdamW weight decay (0: Adam); recipe's: {recipes.describe('weight_decay')}")
    recipe.add_argument("--loss", choices=LOSSES, help=f"training loss; recipe's: {recipes.describe('loss')}")
    recipe.add_argument("--bn-momentum", type=float,
                        help=f"BatchNormalization moving-average momentum; recipe's: {recipes.describe('bn_momentum')}")
    recipe.add_argument("--monitor", choices=sorted(recipes.MONITORS),
                        help="what early stopping and best.keras follow (val_loss: lowest, val_iou: highest); "
                        f"recipe's: {recipes.describe('monitor')}")
    recipe.add_argument("--patience", type=int,
                        help=f"early-stopping patience in epochs; recipe's: {recipes.describe('patience')}")
    parser.add_argument(
        "--min-delta", type=float, default=0.0,
        help="early stopping: the least improvement of --monitor that counts as better",
    )
    parser.add_argument("--backbone", choices=sorted(BLOCKS_PER_STAGE), default="resnet18", help="UNet encoder")
    parser.add_argument(
        "--output", choices=OUTPUTS, default=DEFAULT_OUTPUT,
        help="what the network predicts besides the stone probability, so that predict can tell touching stones "
        "apart: binary (nothing: the prototype's; stones are split by the mask's geometry), boundary (a band at "
        "every stone's edge and the gaps between stones), distance (each stone's distance to its edge, 0 to 1)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="side of the training images; default and only value: the records'"
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=None,
        metavar="N",
        help="train on a random NxN crop of every record (a multiple of 32), drawn each step on the training "
        "device; records smaller than N are padded and the padding counts in no loss or metric; validation "
        f"scores whole records. Default: {DEFAULT_SCALE_CROP} for scale records (the prototype's input size, so a "
        "step costs what a squash-256 step does), whole records for squash records",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        # bfloat16 scored below float32 beyond float32's seed-to-seed spread on stones20 (docs/training.md)
        default="float32",
        help=precision.HELP + "; the variables, augmentation, loss and metrics stay float32, and float16 scales the loss",
    )
    parser.add_argument("--mixed-precision", action="store_true", help=argparse.SUPPRESS)  # removed: see below
    parser.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="XLA-compile the network's forward and backward pass; default on with a GPU or TPU, off on CPU",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed for weights, shuffling and augmentation")
    parser.add_argument("--val-images", type=int, default=4, help="validation photos shown in TensorBoard each epoch")
    parser.add_argument(
        "--skip-hash",
        action="store_true",
        help="check only the shards' sizes against manifest.json, not their SHA-256 (saves reading a very large "
        "record set once more at start)",
    )
    args = parser.parse_args(argv)
    if args.mixed_precision:  # it meant float16 on every device but a TPU, which is emulated (slow) on CPUs
        parser.error("--mixed-precision is gone: use --precision float16 for what it did, or --precision auto")
    del args.mixed_precision
    settings, _ = recipes.resolve(args.recipe, {name: getattr(args, name, None) for name in recipes.SETTINGS})
    vars(args).update(settings)
    for name in ("epochs", "epoch_images", "batch_size", "patience", "steps_per_epoch", "image_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.min_delta < 0:
        parser.error("--min-delta must be at least 0")
    if args.lr <= 0 or args.warmup_epochs < 0 or args.weight_decay < 0 or not 0 <= args.bn_momentum < 1:
        parser.error("--lr must be above 0, --warmup-epochs and --weight-decay at least 0, --bn-momentum in [0, 1)")
    if args.crop is not None and (args.crop < OUTPUT_STRIDE or args.crop % OUTPUT_STRIDE):
        parser.error(f"--crop {args.crop} is not a positive multiple of {OUTPUT_STRIDE} (the network halves the image "
                     "5 times)")
    return args


def steps_per_epoch(args, train_examples, global_batch):
    """--steps-per-epoch, else --epoch-images augmented images (at least one pass over the train photos)
    in global batches."""
    if args.steps_per_epoch:
        return args.steps_per_epoch
    return max(1, max(args.epoch_images, train_examples) // global_batch)


def training_crop(crop, manifest):
    """The crop side to train on: `crop` if given; DEFAULT_SCALE_CROP for scale records, whose sizes differ;
    None (whole records) for squash records."""
    if crop is None and manifest["mode"] == "scale":
        return DEFAULT_SCALE_CROP
    return crop


@cli.command(PROG)
def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    manifest = records.load_manifest(args.records)
    squash = manifest["mode"] == "squash"
    height, width = manifest["image_size"] if squash else (None, None)
    if args.image_size is not None and (args.image_size, args.image_size) != (height, width):
        raise InputError(f"--image-size {args.image_size}: the records in {args.records} are "
                         f"{records.describe(manifest)}; rebuild them")
    if not records.split_size(manifest, "train") or not records.split_size(manifest, "val"):
        raise InputError(f"{args.records / MANIFEST}: training needs a train and a val split (build with "
                         "--val-fraction > 0)")
    args.crop = training_crop(args.crop, manifest)
    if squash and args.crop is not None and args.crop > min(height, width):
        raise InputError(f"--crop {args.crop} is larger than the records in {args.records} "
                         f"({records.describe(manifest)}); crop at most "
                         f"{min(height, width) // OUTPUT_STRIDE * OUTPUT_STRIDE}, or rebuild them larger")
    records.check_shards(args.records, manifest, ("train", "val"), hashes=not args.skip_hash)

    tf = cli.import_tensorflow()
    resolved = precision.on_this_machine(args.precision, tpu=args.strategy == "tpu")
    print(resolved.describe(), flush=True)
    try:
        with precision.global_policy(resolved):  # restored afterwards, for a caller that goes on (a test)
            return train_model(args, manifest, started, resolved)
    except tf.errors.DataLossError as error:
        raise records.corrupted(args.records, manifest, ("train", "val"), error.message.splitlines()[0]) from None


def train_model(args, manifest, started, resolved):
    """Train as `args` say on the checked records of `manifest`, under the global dtype policy of
    `resolved` (a stoneseg.precision.Precision); returns the exit status."""
    import keras
    import tensorflow as tf

    from stoneseg import distribute
    from stoneseg.augment import RandomRecordCrop, SegmentationAugmentation
    from stoneseg.callbacks import ValidationImages, backed_up_epochs, read_history, trim_history
    from stoneseg.data import make_dataset, shard_by
    from stoneseg.metrics import make_losses, training_metrics
    from stoneseg.model import build_unet
    from stoneseg.trainer import SegmentationTrainer

    strategy = distribute.resolve_strategy(args.strategy, args.tpu)
    keras.utils.set_random_seed(args.seed)
    accelerated = bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    jit = accelerated if args.jit is None else args.jit
    squash = manifest["mode"] == "squash"
    height, width = manifest["image_size"] if squash else (None, None)

    global_batch = args.batch_size * strategy.num_replicas_in_sync
    workers = distribute.num_workers(strategy)
    # Whole scale records can be large: validate one per replica. Building the datasets checks each
    # shard's first record against the manifest, before anything is written.
    val_batch = global_batch if squash else strategy.num_replicas_in_sync
    train = make_dataset(args.records, "train", global_batch, training=True, seed=args.seed, num_workers=workers,
                         crop=args.crop, output=args.output)
    val = make_dataset(args.records, "val", val_batch, training=False, num_workers=workers, crop=args.crop,
                       output=args.output)

    run_dir = find_run_dir(args)
    chief = distribute.is_chief(strategy)
    task_dir = run_dir if chief else run_dir / f"worker-{distribute.task_id(strategy)}"
    resuming = (task_dir / BACKUP).is_dir()
    if resuming:
        done = backed_up_epochs(task_dir / BACKUP)
        dropped = trim_history(task_dir / "history.csv", done)
        print(f"resuming {run_dir} from its backup after epoch {done}"
              + (f" (dropped {dropped} history row(s) logged after the backup)" if dropped else ""), flush=True)
    history = read_history(task_dir / "history.csv")
    if history and not resuming:
        raise InputError(f"{run_dir} holds a finished run ({len(history)} epochs); choose another --run-dir")
    task_dir.mkdir(parents=True, exist_ok=True)
    if chief:
        write_config(run_dir, args, manifest, strategy, jit, resolved)

    steps = steps_per_epoch(args, records.split_size(manifest, "train"), global_batch)
    train_shards = len(manifest["splits"]["train"]["shards"])
    print(
        f"strategy {args.strategy} ({type(strategy).__name__}): {strategy.num_replicas_in_sync} replica(s), "
        f"{workers} worker(s); "
        f"batch {args.batch_size} per replica = global batch {global_batch}; {steps} steps per epoch; "
        f"{train_shards} train shard(s) split across workers by {shard_by(train_shards, workers)}; "
        f"XLA {'on' if jit else 'off'}; output {args.output}; records {records.describe(manifest)}, "
        f"{f'random {args.crop}x{args.crop} crops' if args.crop else 'whole'}; run folder {run_dir}",
        flush=True,
    )

    with strategy.scope():
        if args.crop is None:
            network = build_unet((height, width, 3), backbone=args.backbone, bn_momentum=args.bn_momentum,
                                 output=args.output)
            crop, saved_input_shape = None, None
        else:  # crops to train, whole records to validate: one network for any size
            network = build_unet((None, None, 3), backbone=args.backbone, scale=manifest["scale"],
                                 bn_momentum=args.bn_momentum, output=args.output)
            crop = RandomRecordCrop(args.crop, seed=args.seed)
            saved_input_shape = (height, width, 3) if squash else None  # predict squashes photos to this size
        trainer = SegmentationTrainer(
            network, SegmentationAugmentation(seed=args.seed), jit_network=jit, crop=crop,
            saved_input_shape=saved_input_shape, output=args.output,
        )
        trainer.compile(
            optimizer=recipes.make_optimizer(vars(args), args.epochs, steps),
            loss=make_losses(args.loss, args.output),
            metrics=training_metrics(),
            jit_compile=False,  # the network's own compute is compiled inside the trainer when jit
        )
        trainer.build((None, args.crop, args.crop, 3) if args.crop else (None, height, width, 3))

    callbacks = run_callbacks(args, task_dir, history)
    if chief:
        images, masks, *_ = next(iter(make_dataset(args.records, "val", args.val_images, training=False, crop=args.crop,
                                                   output=args.output)))
        callbacks.append(ValidationImages(run_dir / "logs" / "images", images, masks, args.output))
    trainer.fit(
        strategy.experimental_distribute_dataset(train),
        validation_data=strategy.experimental_distribute_dataset(val),
        epochs=args.epochs,
        steps_per_epoch=steps,
        shuffle=False,  # the dataset shuffles
        callbacks=callbacks,
        verbose=1 if cli.interactive() else 2,  # one plain line per epoch in a log
    )
    if not chief:
        shutil.rmtree(task_dir, ignore_errors=True)
        return 0
    print(summary(run_dir, time.time() - started, args.monitor), flush=True)
    return 0


def run_callbacks(args, task_dir, history):
    """The callbacks of every task of a run in `task_dir` whose `history` rows are logged so far: the history,
    the best checkpoint and early stopping by args.monitor (lowest val_loss, highest val_iou), the backup that
    a restarted run resumes from, and TensorBoard."""
    import keras

    from stoneseg.callbacks import ResumableEarlyStopping, best_epoch

    mode = recipes.MONITORS[args.monitor]
    best_so_far = best_epoch(history, args.monitor, mode)
    return [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(task_dir / "history.csv", append=True),
        keras.callbacks.ModelCheckpoint(
            task_dir / "best.keras",
            monitor=args.monitor,
            mode=mode,
            save_best_only=True,
            initial_value_threshold=best_so_far[args.monitor] if best_so_far else None,
        ),
        # Last of the per-epoch writers: an epoch counts as done only once all of the above are on disk
        # (a resumed run drops history rows of epochs this did not back up: trim_history).
        keras.callbacks.BackupAndRestore(task_dir / BACKUP, double_checkpoint=True),
        ResumableEarlyStopping(
            task_dir / "history.csv", monitor=args.monitor, mode=mode, patience=args.patience, min_delta=args.min_delta
        ),
        keras.callbacks.TensorBoard(task_dir / "logs", write_graph=False),
    ]


def find_run_dir(args):
    """The run folder: --run-dir, else the newest unfinished run under runs/ started with the same
    arguments (so the same command resumes it), else a new runs/<timestamp>."""
    if args.run_dir is not None:
        return args.run_dir
    runs = Path("runs")
    wanted = _run_arguments(args)
    for config in sorted(runs.glob("*/config.json"), reverse=True):
        if (config.parent / BACKUP).is_dir() and json.loads(config.read_text())["arguments"] == wanted:
            return config.parent
    return runs / datetime.now().strftime("%Y%m%d-%H%M%S")


def write_config(run_dir, args, manifest, strategy, jit, resolved):
    """config.json: every argument, the package versions, the records' manifest hash and the devices.
    A resumed run keeps the config it started with."""
    path = run_dir / "config.json"
    if path.exists():
        if json.loads(path.read_text())["arguments"] != _run_arguments(args):
            raise InputError(f"{path}: this run folder holds a run with other arguments; choose another --run-dir")
        return
    import tensorflow as tf

    manifest_bytes = (args.records / MANIFEST).read_bytes()
    settings, overridden = recipes.resolve(args.recipe, {name: getattr(args, name) for name in recipes.SETTINGS})
    config = {
        "arguments": _run_arguments(args),
        "recipe": {"name": args.recipe, "settings": settings, "overridden": overridden},
        "run_dir": str(run_dir),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "packages": {name: metadata.version(name) for name in PACKAGES},
        "python": sys.version.split()[0],
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "records_mode": manifest["mode"],
        "records_scale": manifest["scale"],
        "image_size": manifest["image_size"],
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "devices": [device.name for device in tf.config.list_logical_devices()],
        "jit": jit,
        "precision": resolved.name,
        "dtype_policy": resolved.policy,
        "precision_reason": resolved.reason,
    }
    write_atomically(path, (json.dumps(config, indent=2) + "\n").encode())


def summary(run_dir, seconds, monitor="val_loss"):
    """One line: the best epoch by `monitor`, its validation scores and where the model is."""
    from stoneseg.callbacks import best_epoch, read_history

    history = read_history(run_dir / "history.csv")
    best = best_epoch(history, monitor, recipes.MONITORS[monitor])
    if best is None:
        return f"no epoch finished; see {run_dir}"
    return (
        f"best epoch {int(best['epoch']) + 1} of {len(history)}: val_loss {best['val_loss']:.4f}, "
        f"val IoU {best['val_iou']:.4f}, val Dice {best['val_dice']:.4f}; model {run_dir / 'best.keras'}; "
        f"{seconds / 60:.1f} min"
    )


def _run_arguments(args):
    """The arguments that define a run, as JSON-ready values (the run folder and --skip-hash excluded)."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
            if key not in NOT_RUN_ARGUMENTS}


if __name__ == "__main__":
    sys.exit(main())
