"""The precision policy: a user's dtype choice plus the device's capabilities -> the dtype the VAE runs in.

One pure function, `resolve`, so the whole rule set is one table in tests/test_policy.py.
"""
from dataclasses import dataclass

import torch

from .device_caps import DeviceCaps
from .dtypes import name_of

HOST_DEFAULT = "host default"
CHOICES = (HOST_DEFAULT, "auto", "bf16", "fp16", "fp32", "mixed")


@dataclass(frozen=True)
class Precision:
    choice: str
    dtype: torch.dtype      # dtype of weights and activations (with `mixed`: of the blocks fp16 cannot hold)
    mixed: bool = False     # each block in fp16 where its activations fit (mixed.py), else in `dtype`
    reason: str = ""
    warning: str = ""       # set when the user forced something the device runs slowly
    emulated: str = ""      # the forced choice the device only emulates, run as `dtype` instead


def _fast(caps, dtype):
    if dtype == torch.float32:
        return True
    return caps.native_bf16 if dtype == torch.bfloat16 else caps.native_fp16


def _auto(caps: DeviceCaps, fp16_safe: bool):
    if caps.native_bf16:
        return torch.bfloat16, f"{caps.kind} runs bf16 natively"
    if caps.native_fp16 and fp16_safe:
        return torch.float16, f"{caps.kind} has no native bf16; this VAE is fp16-safe"
    if caps.native_fp16:
        return torch.float32, f"{caps.kind} has no native bf16 and this VAE overflows fp16"
    return torch.float32, f"{caps.kind} has no native bf16/fp16"


def resolve(choice: str, caps: DeviceCaps, fp16_safe: bool = True, avoid_emulated: bool = True):
    """Returns the Precision for `choice` on a device with `caps`, or None for "host default".

    A forced bf16/fp16 that the device only emulates (orders of magnitude slower: a 64x64 fp16 decode took
    35-103 s on a CPU without native fp16, fp32 under 1 s) runs as fp32 unless `avoid_emulated` is off:
    fp32 holds every bf16 and fp16 value exactly, so its images are the nearest to the forced dtype's, and
    every device runs it natively."""
    if choice == HOST_DEFAULT:
        return None
    if choice == "auto":
        if caps.kind != "cpu" and caps.native_bf16 and caps.native_fp16:
            # On an H100, mixed cost 1.02-1.05x bf16's time at 1024² and up (0.89-1.22x at 512², between runs)
            # for an error against fp32 of 64 dB instead of 46, never NaN (docs/benchmarks.md). CPUs keep the
            # fastest format.
            return Precision(choice, torch.bfloat16, mixed=True,
                             reason=f"{caps.kind} runs fp16 and bf16 natively: fp16 where the activations fit")
        dtype, reason = _auto(caps, fp16_safe)
        return Precision(choice, dtype, reason=reason)
    if choice == "mixed":
        safe = torch.bfloat16 if caps.native_bf16 else torch.float32
        if not caps.native_fp16:
            return Precision(choice, safe, reason=f"{caps.kind} has no native fp16: mixed runs as {name_of(safe)}")
        return Precision(choice, safe, mixed=True, reason=f"fp16 where this VAE's activations fit, else {name_of(safe)}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]
    if _fast(caps, dtype):
        return Precision(choice, dtype, reason="forced")
    device = caps.name or caps.kind
    if avoid_emulated:
        return Precision(choice, torch.float32, reason=f"{device} only emulates {choice}", emulated=choice,
                         warning=f"{choice} was chosen, but {device} has no native {choice} and would run it orders "
                                 f"of magnitude slower: running fp32 instead (turn off 'Avoid emulated dtypes', "
                                 f"avoid_emulated, to force {choice})")
    return Precision(choice, dtype, reason="forced",
                     warning=f"{choice} was forced on {device}, which has no native {choice}: it will run much "
                             f"slower than fp32 (use 'auto' to let the device decide)")
