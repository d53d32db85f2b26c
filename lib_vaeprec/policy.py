"""The precision policy: a user's dtype choice plus the device's capabilities -> the dtype the VAE runs in.

One pure function, `resolve`, so the whole rule set is one table in tests/test_policy.py.
"""
from dataclasses import dataclass

import torch

from .device_caps import DeviceCaps

HOST_DEFAULT = "host default"
CHOICES = (HOST_DEFAULT, "auto", "bf16", "fp16", "fp32", "mixed")


@dataclass(frozen=True)
class Precision:
    choice: str
    dtype: torch.dtype      # dtype of weights and activations (convolutions)
    mixed: bool = False     # normalisation layers and the output conv kept in fp32
    reason: str = ""
    warning: str = ""       # set when the user forced something the device runs slowly


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


def resolve(choice: str, caps: DeviceCaps, fp16_safe: bool = True):
    """Returns the Precision for `choice` on a device with `caps`, or None for "host default"."""
    if choice == HOST_DEFAULT:
        return None
    if choice == "auto":
        dtype, reason = _auto(caps, fp16_safe)
        return Precision(choice, dtype, reason=reason)
    if choice == "mixed":
        dtype, reason = _auto(caps, fp16_safe)
        if dtype == torch.float32:
            return Precision(choice, dtype, reason=reason + ": mixed runs as fp32")
        return Precision(choice, dtype, mixed=True, reason="norms and output conv in fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]
    warning = ""
    if not _fast(caps, dtype):
        warning = (f"{choice} was forced on {caps.name or caps.kind}, which has no native {choice}: "
                   f"it will run much slower than fp32 (use 'auto' to let the device decide)")
    return Precision(choice, dtype, reason="forced", warning=warning)
