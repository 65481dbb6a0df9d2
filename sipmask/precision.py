"""bfloat16 on the CPU: whether this CPU runs it natively, and the float32 fallback with its one warning.

`sipmask train --amp` on a CPU and `Predictor(..., bf16=True)` (`sipmask predict --bf16`) run the
network under `torch.autocast("cpu", dtype=torch.bfloat16)`. That is faster than float32 only where
oneDNN has bfloat16 instructions to use: AVX-512 BF16 (Intel Cooper Lake and later, AMD Zen 4 and
later) or AMX (Intel Sapphire Rapids and later). Elsewhere bfloat16 is emulated and slower than
float32, so the request falls back to float32 with one warning, given when the trainer or predictor
is set up (never per step or per call).
"""
from __future__ import annotations

import platform
import subprocess
import warnings

import torch

__all__ = ["CPU_BF16_FEATURES", "cpu_has_native_bf16", "cpu_model_name", "use_cpu_bf16"]

#: torch.cpu's capability checks (private helpers, present in torch >= 2.1) that make bfloat16 fast.
CPU_BF16_FEATURES = {"_is_avx512_bf16_supported": "AVX-512 BF16", "_is_amx_tile_supported": "AMX"}


def cpu_has_native_bf16() -> bool:
    """True when this CPU has AVX-512 BF16 or AMX (x86); False elsewhere, and where torch cannot tell."""
    for name in CPU_BF16_FEATURES:
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return True
    return False


def use_cpu_bf16(requested: bool, what: str, warn: bool = True) -> bool:
    """Whether to run in bfloat16 on the CPU: `requested` and the CPU has native support. A request on a
    CPU without it returns False, i.e. float32, and warns (here, once per call: call it once per set-up;
    `warn` False for the other processes of a torchrun job). `what` names the option in the warning,
    e.g. "--amp" or "bf16"."""
    if not requested:
        return False
    if cpu_has_native_bf16():
        return True
    if not warn:
        return False
    features = " or ".join(CPU_BF16_FEATURES.values())
    warnings.warn(f"{what}: this CPU has no {features}, where bfloat16 is slower than float32; "
                  "running in float32", RuntimeWarning, stacklevel=3)
    return False


def cpu_model_name() -> str:
    """This CPU's model name as `lscpu` gives it (benchmark reports), else what `platform` knows."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()
