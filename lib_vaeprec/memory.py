"""Accelerator memory: what is free, recognising out-of-memory errors, handing cached memory back."""
import gc
import logging

import torch


def free_bytes(device):
    """Memory a new allocation can use: free on the device plus what torch's cache holds unused."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + cached_bytes(device)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()
    return host_available_bytes()


def cached_bytes(device):
    """What torch's CUDA allocator keeps reserved but unused (0 elsewhere)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def is_out_of_memory(error):
    if isinstance(error, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    # CUDA/MPS: "... out of memory ..."; CPU: "DefaultCPUAllocator: can't allocate memory"
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_cached(device, collect=True):
    """Returns the allocator's cached blocks to the device (what 'free cached memory' asks for).

    `collect` first runs Python's garbage collector, so tensors only cycles still hold are freed too;
    it takes a few hundred ms in a web UI process, so the per-call option skips it."""
    if collect:
        gc.collect()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# Host RAM assumed where it cannot be read (psutil missing, refused in a sandbox, or reading 0, which no
# running process has): small enough to plan conservatively on any machine that runs a web UI.
UNKNOWN_HOST_BYTES = 2 << 30
_said = set()


def host_available_bytes():
    """Host RAM available to new allocations (psutil's 'available'), or UNKNOWN_HOST_BYTES where it cannot
    be read (said once)."""
    try:
        import psutil
        available = psutil.virtual_memory().available
        if available > 0:
            return available
        why = f"it reads {available} bytes available"
    except Exception as error:  # noqa: BLE001 - ImportError, PermissionError in a sandbox, anything else
        why = f"{type(error).__name__}: {' '.join(str(error).split())[:120]}"
    _say_once(f"VAE Precision: host memory cannot be read ({why}); planning as if "
              f"{UNKNOWN_HOST_BYTES / 2**30:.0f} GiB were available")
    return UNKNOWN_HOST_BYTES


def process_resident_bytes():
    """This process's resident memory, or None where it cannot be read (a figure for stats only)."""
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except Exception:  # noqa: BLE001 - a missing figure, never a failed call
        return None


def _say_once(message):
    if message not in _said:
        _said.add(message)
        logging.getLogger("vae_precision").warning(message)
