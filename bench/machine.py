"""The line every benchmark prints first: which CPU the figures come from, the instruction-set flags
that decide how fast bfloat16 and matrix work can be (avx512_bf16, AMX), the cores this process may
use and the load on them. Figures from two machines are only comparable with this line beside them."""

import os

from stoneseg import cli
from stoneseg.precision import cpu_info

FLAGS_THAT_MATTER = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def describe() -> str:
    """One line: CPU model, the flags that matter (yes/no each), usable cores, 1-minute load average."""
    model, flags = cpu_info()
    present = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS_THAT_MATTER)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"CPU: {model}; {present}; {cli.cores()} usable cores; load average {load:.1f}"
