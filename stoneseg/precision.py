"""The compute precision of train, predict and evaluate (`--precision auto|float32|bfloat16|float16`),
resolved in one place to a Keras dtype policy.

`auto` picks what the hardware computes natively: bfloat16 on a CPU with the `avx512_bf16` or
`amx_bf16` flag (read from /proc/cpuinfo; elsewhere no flags are known, so float32), on a GPU of
compute capability 8.0 or newer, and on a TPU; float16 on older GPUs (the only place where float16
with loss scaling pays); float32 everywhere else. Under either 16-bit policy the variables stay
float32, and the layers the model pins to float32 (the pixels coming in, the probabilities going
out) stay so, as do the augmentation, the loss and the metrics.

`resolve` takes the hardware as a `Hardware` value, so every rule is testable without the hardware;
`detect_hardware` fills it in (it needs TensorFlow). Importing this module loads neither.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

HELP = ("compute dtype of the network (its input and probabilities stay float32); auto: bfloat16 where the hardware "
        "computes it natively (CPU flag avx512_bf16 or amx_bf16, GPU compute capability >= 8.0, TPU), float16 on "
        "older GPUs, float32 elsewhere")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_GPU_CAPABILITY = (8, 0)  # Ampere (A100) and newer compute bfloat16 natively
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Hardware:
    """What `auto` looks at: the CPU's flags, each GPU's compute capability (major, minor), a TPU."""

    cpu_flags: frozenset[str] = frozenset()
    gpu_capabilities: tuple[tuple[int, int], ...] = ()
    tpu: bool = False


@dataclass(frozen=True)
class Precision:
    """A resolved --precision: the compute dtype, its Keras policy and why it was chosen."""

    name: str  # float32, bfloat16 or float16
    reason: str = field(compare=False)

    @property
    def policy(self) -> str:
        return POLICIES[self.name]

    def describe(self) -> str:
        return f"precision {self.name} (Keras policy {self.policy}; {self.reason})"


def resolve(choice: str, hardware: Hardware) -> Precision:
    """The precision for `choice` (one of choices.PRECISIONS) on `hardware`; with several GPUs, the
    oldest decides."""
    if choice != "auto":
        return Precision(choice, "asked for")
    if hardware.tpu:
        return Precision("bfloat16", "auto: a TPU")
    if hardware.gpu_capabilities:
        oldest = min(hardware.gpu_capabilities)
        capability = ".".join(map(str, oldest)) if oldest > (0, 0) else "unknown"
        if oldest >= BF16_GPU_CAPABILITY:
            return Precision("bfloat16", f"auto: GPU compute capability {capability}")
        return Precision("float16", f"auto: GPU compute capability {capability}, below 8.0")
    native = [flag for flag in BF16_CPU_FLAGS if flag in hardware.cpu_flags]
    if native:
        return Precision("bfloat16", f"auto: CPU flag {', '.join(native)}")
    return Precision("float32", f"auto: no {' or '.join(BF16_CPU_FLAGS)} CPU flag, no GPU or TPU")


def on_this_machine(choice: str, tpu: bool = False) -> Precision:
    """`choice` resolved for this machine's hardware (detect_hardware; TensorFlow is imported)."""
    return resolve(choice, detect_hardware(tpu))


def cpu_info(cpuinfo: Path = CPUINFO) -> tuple[str, frozenset[str]]:
    """The CPU's model name and its flags, from the first processor entry of /proc/cpuinfo
    ("unknown" and no flags where there is no such file, as on macOS and Windows)."""
    model, flags = "unknown", frozenset()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    return model, flags


def detect_hardware(tpu: bool = False) -> Hardware:
    """This machine's Hardware, as TensorFlow sees it (`tpu`: a TPU strategy is asked for, whose devices
    may appear only once it has connected)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability:
            capabilities.append(tuple(capability))
        else:  # none reported (not a CUDA GPU): count it as an old one, where float16 is the safe choice
            capabilities.append((0, 0))
    # Physical devices only: listing logical ones starts TensorFlow's runtime, after which a multi-worker
    # strategy can no longer configure its collective ops.
    return Hardware(cpu_info()[1], tuple(capabilities), tpu or bool(tf.config.list_physical_devices("TPU")))


@contextlib.contextmanager
def global_policy(precision: Precision):
    """Within the block, `precision` is Keras' global policy: every layer built there computes in it
    (and a Model compiled under mixed_float16 gets a LossScaleOptimizer). The policy before is restored."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.policy)
    try:
        yield precision
    finally:
        keras.mixed_precision.set_global_policy(before)


def apply_to_model(model, precision: Precision, keep_float32: tuple[str, ...] = ()):
    """`model` (a loaded Keras model, changed in place and returned) computing in `precision`: every
    layer takes its policy except the input layers, the output layers (probabilities stay float32) and
    those named in `keep_float32`, which are float32.

    A model keeps the policy it was saved under; this is how a float32 model runs in bfloat16 (or a
    bfloat16-trained model in float32). The variables are float32 under every policy, so the weights
    are untouched. Call it before the model first runs: a traced predict function keeps the old dtypes.
    """
    import keras

    float32 = set(keep_float32) | set(model.output_names)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        layer.dtype_policy = "float32" if layer.name in float32 else precision.policy
    return model
