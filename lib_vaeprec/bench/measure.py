"""Timing, memory and quality figures of one VAE variant on one input."""
import statistics
import time

import torch

from .. import memory


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn, device, warmup, runs):
    """Median milliseconds of `runs` calls after `warmup` calls, and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def peak_extra_bytes(fn, device):
    """Peak allocator memory above the level before one call (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


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


def image_psnr(image, reference):
    """PSNR in dB of images in [-1, 1], compared in [0, 1] (99 for identical)."""
    a = (image.float().clamp(-1, 1) + 1) / 2
    b = (reference.float().clamp(-1, 1) + 1) / 2
    mse = torch.mean((a - b) ** 2).item()
    return 99.0 if mse == 0 else min(99.0, 10 * torch.log10(torch.tensor(1.0 / mse)).item())


def latent_psnr(latent, reference):
    """PSNR in dB of latents, with the reference's value range as the peak."""
    a, b = latent.float(), reference.float()
    mse = torch.mean((a - b) ** 2).item()
    span = (b.max() - b.min()).item() or 1.0
    return 99.0 if mse == 0 else min(99.0, 10 * torch.log10(torch.tensor(span * span / mse)).item())


def nonfinite_count(tensor):
    return int((~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)).sum())
