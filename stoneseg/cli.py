"""What every command shares: the one error for bad input, the core count, a quiet TensorFlow start-up
and progress that stays plain in a log.

Importing this module loads neither TensorFlow nor Keras, so a command parses its arguments (and
answers `--help`) before it pays for them.
"""

import contextlib
import functools
import os
import re
import sys
import tempfile
import time


class InputError(ValueError):
    """An ordinary mistake in what a command was given: a missing folder, a wrong file, outputs in the
    way, damaged records. The command ends with its message as one `prog: error: ...` line, status 1."""


def cores() -> int:
    """The CPU cores this process may run on (fewer than the machine's under taskset or a CPU quota)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def error_line(prog: str, message) -> None:
    """Print `prog: error: message` on stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def command(prog: str):
    """Decorator for a command's `main(argv) -> int`: an InputError or OSError (a missing file, a full
    disk, a denied permission) raised anywhere in it ends in one error line and status 1, not a traceback."""
    def decorate(main):
        @functools.wraps(main)
        def guarded(argv=None):
            try:
                return main(argv)
            except InputError as error:
                error_line(prog, error)
            except OSError as error:
                error_line(prog, _describe(error))
            return 1
        return guarded
    return decorate


def _describe(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


# ----------------------------------------------------------------------------- TensorFlow's start-up
# Lines TensorFlow prints while it loads and looks for a GPU, before it has read TF_CPP_MIN_LOG_LEVEL,
# so that variable cannot hide them (tensorflow/tensorflow#100442). All are harmless on a CPU machine.
START_UP_NOTICES = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|\] oneDNN custom operations are on\."
    r"|\] Could not find cuda drivers on your machine, GPU will not be used\."
    r"|\] failed call to cuInit: "
)


def import_tensorflow():
    """Import TensorFlow and Keras and let TensorFlow look for its devices, quietly; returns `tensorflow`.

    Unless TF_CPP_MIN_LOG_LEVEL is set already it becomes 2, which hides TensorFlow's C++ info and
    warning lines. The lines it prints before reading that variable (START_UP_NOTICES) are dropped from
    this process's stderr while it loads; every other line is passed on. Set TF_CPP_MIN_LOG_LEVEL to 0
    or 1 to see them all.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    wanted = os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1")
    with contextlib.nullcontext() if wanted else _start_up_notices_dropped():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA's cuInit runs here
    return tf


@contextlib.contextmanager
def _start_up_notices_dropped():
    """Send file descriptor 2 to a temporary file for the block, then copy what it caught to stderr
    without the START_UP_NOTICES lines (C++ code writes to the descriptor, not to `sys.stderr`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not START_UP_NOTICES.search(line)))
            sys.stderr.flush()


# ----------------------------------------------------------------------------- progress
def interactive() -> bool:
    """Whether stdout is a terminal (progress bars redraw in place), not a log file or a pipe."""
    return sys.stdout.isatty()


class Progress:
    """Counts finished items. On a terminal: Keras' progress bar. Otherwise: a plain line
    `prog: 30/100 photos, 12.3 s` each time another tenth is done, and at the end."""

    def __init__(self, total: int, unit: str, prog: str):
        self.total, self.unit, self.prog = total, unit, prog
        self.done, self.started = 0, time.perf_counter()
        self.bar = None
        if interactive():
            import_tensorflow()
            from keras.utils import Progbar

            self.bar = Progbar(total, unit_name=unit)

    def add(self, count: int = 1) -> None:
        before, self.done = self.done, self.done + count
        if self.bar is not None:
            self.bar.add(count)
        elif self.total > 0 and (self.done >= self.total or self.done * 10 // self.total > before * 10 // self.total):
            print(f"{self.prog}: {self.done}/{self.total} {self.unit}s, {time.perf_counter() - self.started:.1f} s",
                  flush=True)
