"""What a torch device can run natively: the facts the precision policy decides on."""
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class DeviceCaps:
    kind: str                       # "cuda", "cpu", "mps", "xpu", ...
    name: str = ""
    cuda_capability: tuple = None   # (major, minor) on CUDA
    native_bf16: bool = False
    native_fp16: bool = False


@lru_cache(maxsize=None)
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_caps():
    flags = _cpu_flags()
    # Without these instructions torch emulates bf16/fp16 convolutions: measured ~200x slower than fp32.
    return DeviceCaps(
        kind="cpu", name="cpu",
        native_bf16=bool(flags & {"avx512_bf16", "amx_bf16"}),
        native_fp16=bool(flags & {"avx512_fp16", "amx_fp16"}),
    )


@lru_cache(maxsize=None)
def _cuda_caps(index):
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceCaps(
        kind="cuda", name=torch.cuda.get_device_name(index), cuda_capability=(major, minor),
        native_bf16=(major, minor) >= (8, 0), native_fp16=(major, minor) >= (5, 3),
    )


def caps_of(device):
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_caps(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu":
        return cpu_caps()
    if device.type == "mps":
        return DeviceCaps(kind="mps", name="mps", native_bf16=False, native_fp16=True)
    if device.type == "xpu":
        return DeviceCaps(kind="xpu", name="xpu", native_bf16=True, native_fp16=True)
    return DeviceCaps(kind=device.type, name=device.type)


def best_device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
