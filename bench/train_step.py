"""Is the input pipeline ever what limits training? Images/s at 256×256, batch 4, side by side:

  (a) the tf.data pipeline alone (decoded, cached records → batches);
  (b) training fed from in-memory tensors (one batch repeated; Keras' own train step, no augmentation);
  (c) training fed from the real pipeline, augmentation inside the train step (what stoneseg.train does);
  plus where the augmentation is placed: in the tf.data map on the host instead of the train step,
  and XLA on and off for the network (with augmentation in the step, only the network is compiled);
  and (c) again under the mixed_bfloat16 policy (stoneseg.train --precision bfloat16), without and with
  XLA, for the line `bfloat16 / float32 = R` (target R >= 1.4 on a CPU with avx512_bf16).

Cases run in alternating rounds. Each figure is the median over rounds of the median step interval,
which skips each fit's first step; so that an input stall (only the pipeline-fed cases can have one)
cannot hide, (c)/(b) is also given from the total elapsed time of each fit, first step included.
--steps is the number of timed steps (batches for (a)) per case per round.
The crop variant (--crop N) asks the same of `train --crop N` on scale records, whose sizes differ: (a)
batches of whole records padded to a common size, (b) N×N crops from memory, (c) the real pipeline with
the random crop and the augmentation inside the train step; the network takes any size in both; (c)
also runs under bfloat16.

    python -m bench.train_step [--records DIR] [--rounds 3] [--steps 20] [--crop N [--scale F]]
Without --records it builds records of ../shared/data/stones20 at 256 px into data/bench-records/ (with
--crop: at scale F, 0.5 by default, into data/bench-records-scaleF/).
"""

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import describe  # noqa: E402
from stoneseg.augment import RandomRecordCrop, SegmentationAugmentation  # noqa: E402
from stoneseg.data import make_dataset  # noqa: E402
from stoneseg.metrics import make_loss, training_metrics  # noqa: E402
from stoneseg.model import build_unet  # noqa: E402
from stoneseg.precision import Precision, global_policy  # noqa: E402
from stoneseg.trainer import SegmentationTrainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STONES20 = REPO.parent / "shared" / "data" / "stones20"
BATCH = 4


class StepTimer(keras.callbacks.Callback):
    """When fit started and when each train batch ended."""

    def on_train_begin(self, logs=None):
        self.begin, self.ends = time.perf_counter(), []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def median_interval(self):
        """The median time between consecutive batch ends (the first step is not among them)."""
        return statistics.median(np.diff(self.ends))

    def total(self):
        """From the start of fit to the end of the last batch: every step, stalls included."""
        return self.ends[-1] - self.begin


def default_records(scale=None):
    """stones20's records at 256x256, or at `scale`, built on first use."""
    records = REPO / "data" / ("bench-records" if scale is None else f"bench-records-scale{scale:g}")
    if not (records / "manifest.json").exists():
        from tools.build_records import main as build_records

        mode = ["--size", "256"] if scale is None else ["--scale", str(scale)]
        build_records(["--data", str(STONES20), "--out", str(records), *mode])
    return records


def compiled(model, jit):
    model.compile(keras.optimizers.Adam(1e-3), make_loss("bce"), metrics=training_metrics(), jit_compile=jit)
    return model


def host_augmented(dataset):
    """The comparison placement: the same augmentation in the tf.data map, on the host CPU."""
    augmentation = SegmentationAugmentation(seed=0)
    return dataset.map(lambda x, y: augmentation(x, y, training=True), num_parallel_calls=tf.data.AUTOTUNE)


def pipeline_rate(records, steps, crop=None):
    iterator = iter(make_dataset(records, "train", BATCH, training=True, seed=0, crop=crop))
    for _ in range(20):  # fill the cache and the prefetch buffer
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * BATCH / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, default=None, help="records at 256 px (default: stones20's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case per round")
    parser.add_argument("--crop", type=int, default=None, metavar="N", help="the crop variant: random NxN crops")
    parser.add_argument("--scale", type=float, default=0.5, metavar="F",
                        help="with --crop and no --records: stones20's records at this scale (default: %(default)s)")
    args = parser.parse_args()
    print(describe(), flush=True)
    records = args.records or default_records(args.scale if args.crop else None)
    keras.utils.set_random_seed(0)

    pipeline = make_dataset(records, "train", BATCH, training=True, seed=0, crop=args.crop)
    if args.crop is None:
        images, masks = next(iter(pipeline))
        cases, shape = placement_cases(pipeline, images, masks), tuple(images.shape[1:])
    else:
        images, masks, _ = RandomRecordCrop(args.crop, seed=0)(*next(iter(pipeline)))
        cases, shape = crop_cases(pipeline, images, masks, args.crop), (args.crop, args.crop, 3)
    for model, dataset in cases.values():  # trace and compile once, untimed
        model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)

    rates = {name: [] for name in cases}
    totals = {name: [] for name in cases}  # images/s over each fit's total elapsed time
    rates[PIPELINE] = []
    for round_ in range(args.rounds):
        rates[PIPELINE].append(pipeline_rate(records, args.steps, args.crop))
        for name, (model, dataset) in cases.items():
            timer = StepTimer()
            model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
            rates[name].append(BATCH / timer.median_interval())
            totals[name].append(args.steps * BATCH / timer.total())
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    median = {name: statistics.median(values) for name, values in rates.items()}
    median_total = {name: statistics.median(values) for name, values in totals.items()}
    variant = f"random {args.crop}×{args.crop} crops of {records.name}" if args.crop else f"{shape[0]}×{shape[1]}"
    print(f"\nimages/s at {variant}, batch {BATCH} (median of {args.rounds} rounds × {args.steps} steps; "
          "by median step interval, and by each fit's total elapsed time):")
    for name in sorted(median, key=lambda n: (not n.startswith("("), n)):
        total = f"{median_total[name]:9.1f}" if name in median_total else f"{'':9}"
        print(f"  {name:<52} {median[name]:9.1f} {total}")
    in_step = next(name for name in cases if name.startswith("(c)"))
    a, b, c = median[PIPELINE], median[IN_MEMORY], median[in_step]
    print(f"\n(a)/(b) = {a / b:.0f}×   (target ≥ 10×)")
    print(f"(c)/(b) = {c / b:.3f} by median step interval, {median_total[in_step] / median_total[IN_MEMORY]:.3f} by "
          "total elapsed time   (target ≥ 0.95)")
    if args.crop is None:
        print(f"augmentation in tf.data map / in train step = {median[HOST_AUGMENTED] / c:.3f}")
        print(f"XLA / no XLA, in-memory = {median[IN_MEMORY_XLA] / b:.3f}; with augmentation in step = "
              f"{median[IN_STEP_XLA] / c:.3f}; with augmentation in step under bfloat16 = "
              f"{median[IN_STEP_XLA_BF16] / median[IN_STEP_BF16]:.3f}")
    print(f"bfloat16 / float32 = {median[IN_STEP_BF16] / c:.3f}  (images/s, real pipeline, augmentation in the "
          "train step; target >= 1.4 on a CPU with avx512_bf16)")
    print(f"load average now {os.getloadavg()[0]:.1f}")


PIPELINE = "(a) tf.data pipeline alone"
IN_MEMORY = "(b) in-memory tensors, no augmentation"
HOST_AUGMENTED = "    real pipeline, augmentation in tf.data map"
IN_MEMORY_XLA = "    in-memory tensors, XLA"
IN_STEP_XLA = "    real pipeline, augmentation in step, network XLA"
IN_STEP_BF16 = "    real pipeline, augmentation in step, bfloat16"
IN_STEP_XLA_BF16 = "    real pipeline, aug. in step, network XLA, bfloat16"


def bfloat16(build):
    """What `build()` returns, built (and compiled) under the mixed_bfloat16 policy, as train --precision
    bfloat16 builds it."""
    with global_policy(Precision("bfloat16", "bench")):
        return build()


def placement_cases(pipeline, images, masks):
    """The squash cases: (b), (c), and where the augmentation runs, with and without XLA."""
    in_memory = tf.data.Dataset.from_tensors((images, masks)).repeat()
    shape = tuple(images.shape[1:])
    return {
        IN_MEMORY: (compiled(build_unet(shape), jit=False), in_memory),
        "(c) real pipeline, augmentation in train step": (
            compiled(SegmentationTrainer(build_unet(shape), SegmentationAugmentation(seed=0)), jit=False),
            pipeline,
        ),
        HOST_AUGMENTED: (compiled(build_unet(shape), jit=False), host_augmented(pipeline)),
        IN_MEMORY_XLA: (compiled(build_unet(shape), jit=True), in_memory),
        IN_STEP_XLA: (
            compiled(SegmentationTrainer(build_unet(shape), SegmentationAugmentation(seed=0), jit_network=True), jit=False),
            pipeline,
        ),
        IN_STEP_BF16: (
            bfloat16(lambda: compiled(SegmentationTrainer(build_unet(shape), SegmentationAugmentation(seed=0)), jit=False)),
            pipeline,
        ),
        IN_STEP_XLA_BF16: (
            bfloat16(lambda: compiled(SegmentationTrainer(build_unet(shape), SegmentationAugmentation(seed=0),
                                                          jit_network=True), jit=False)),
            pipeline,
        ),
    }


def crop_cases(pipeline, images, masks, crop):
    """The crop variant: (b) crops from memory, (c) padded records cropped and augmented in the step;
    the network takes any size in both, as `train --crop` builds it."""
    in_memory = tf.data.Dataset.from_tensors((images, masks)).repeat()
    def trainer():
        return compiled(SegmentationTrainer(build_unet((None, None, 3)), SegmentationAugmentation(seed=0),
                                            crop=RandomRecordCrop(crop, seed=0)), jit=False)

    return {
        IN_MEMORY: (compiled(build_unet((None, None, 3)), jit=False), in_memory),
        "(c) real pipeline, crop and augmentation in train step": (trainer(), pipeline),
        IN_STEP_BF16: (bfloat16(trainer), pipeline),
    }


if __name__ == "__main__":
    main()
