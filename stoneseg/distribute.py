"""`--strategy NAME` → a `tf.distribute` strategy. The one place that knows which strategy is active."""

import json
import os

import tensorflow as tf

from stoneseg.choices import STRATEGIES
from stoneseg.cli import InputError


def resolve_strategy(name, tpu=""):
    """Create the strategy called `name`; call it first, before any other TensorFlow work.

    auto: multi_worker when TF_CONFIG describes a cluster, mirrored over several GPUs, else default.
    default: no distribution. one_device: the first GPU, or the CPU. mirrored: all local GPUs, or
    the CPU when there are none. multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.
    tpu: TPUStrategy on the TPU at `tpu` ("" = the local or environment-configured one).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_physical_devices("GPU")  # does not start the runtime (multi_worker needs that)
    if name == "auto":
        name = "multi_worker" if _cluster() else "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not _cluster():
            raise InputError("--strategy multi_worker needs TF_CONFIG describing the cluster and this task")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this task writes checkpoints, summaries and the run folder (always, but in a cluster)."""
    return strategy.extended.should_checkpoint


def task_id(strategy):
    """This worker's index in a multi-worker cluster (0 elsewhere)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return (resolver.task_id or 0) if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) else 0


def num_workers(strategy):
    """Input pipelines that read the records: one per worker of a multi-worker cluster, else one."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec()
        return sum(spec.num_tasks(kind) for kind in ("chief", "worker") if kind in spec.jobs)
    return 1


def _cluster():
    """The cluster of TF_CONFIG, or {} without one."""
    return json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
