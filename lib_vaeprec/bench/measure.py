"""Timing, memory and quality figures of one VAE variant on one input."""
import math
import statistics
import time
from dataclasses import dataclass

import torch

from .. import memory


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    ms: float            # median of the timed calls
    first_ms: float      # the first call: it casts the weights and meets the shape for the first time
    peak_bytes: int      # allocator peak above the level before the last call (CUDA; None elsewhere)
    result: object       # what the last call returned


def _timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return (time.perf_counter() - start) * 1000, result


def timed_runs(fn, device, warmup, runs):
    """Median milliseconds of `runs` calls after `warmup` calls, the first call's time, and the peak
    memory of the last call (measured on a timed call: no extra call just for the peak)."""
    first_ms = None
    for _ in range(warmup):
        ms, _result = _timed(fn, device)
        first_ms = ms if first_ms is None else first_ms
        del _result
    times, peak, result = [], None, None
    for i in range(runs):
        last = i == runs - 1
        if last and device.type == "cuda":
            sync(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        ms, result = _timed(fn, device)
        if last and device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - base
        times.append(ms)
        first_ms = ms if first_ms is None else first_ms
    return Timing(statistics.median(times), first_ms, peak, result)


def resident_bytes(device):
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def cached_bytes(device):
    """What torch's allocator keeps reserved but unused: memory other programs cannot have."""
    return memory.cached_bytes(device) if device.type == "cuda" else None


def device_used_bytes(device):
    """Memory in use on the whole device, as nvidia-smi counts it."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return total - free


IDENTICAL_DB = 99.0   # what the PSNR columns show for a result equal to the reference


def _psnr(mse, peak_squared):
    return IDENTICAL_DB if mse == 0 else min(IDENTICAL_DB, 10 * math.log10(peak_squared / mse))


def image_psnr(image, reference):
    """PSNR in dB of images in [-1, 1], compared in [0, 1] (99 for identical); None when either holds
    a NaN or Inf: clamping would hide it, and no figure describes such an image."""
    if not (all_finite(image) and all_finite(reference)):
        return None
    a = (image.float().clamp(-1, 1) + 1) / 2
    b = (reference.float().clamp(-1, 1) + 1) / 2
    return _psnr(torch.mean((a - b) ** 2).item(), 1.0)


def latent_psnr(latent, reference):
    """PSNR in dB of latents, with the reference's value range as the peak; None for a non-finite one."""
    if not (all_finite(latent) and all_finite(reference)):
        return None
    a, b = latent.float(), reference.float()
    span = (b.max() - b.min()).item() or 1.0
    return _psnr(torch.mean((a - b) ** 2).item(), span * span)


def max_abs_error(result, reference):
    """Largest absolute difference, or None when the result is not finite (it would read nan or inf)."""
    if not all_finite(result):
        return None
    return (result.float() - reference.float()).abs().max().item()


def all_finite(tensor):
    return bool(torch.isfinite(tensor).all())


def nonfinite_count(tensor):
    """Samples of the batch holding any NaN or Inf."""
    return int((~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)).sum())
