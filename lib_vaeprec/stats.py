"""Measuring one VAE call (time, peak extra accelerator memory, process RAM) and summing a generation."""
import contextlib
import time
from dataclasses import dataclass, field

import torch

from .dtypes import name_of
from .memory import process_resident_bytes


@dataclass
class CallStats:
    kind: str                          # "decode" or "encode"
    dtype: str = ""                    # dtype the call ran in ("bf16", "mixed", ...)
    blocks: str = ""                   # mixed: how many blocks ran in fp16 ("fp16 11/16 blocks")
    kernels: str = ""                  # "triton" where the fused blocks' Triton kernels ran (fused_blocks)
    seconds: float = 0.0
    peak_bytes: int = None             # peak accelerator memory above the level before the call
    ram_bytes: int = None              # process resident memory after the call
    samples: int = 0
    device: str = ""                   # type of the device the pixels were computed on ("cuda", "cpu", ...)
    emulated: str = ""                 # a forced dtype the device only emulates, run as `dtype` instead
    rounded_weights: tuple = ()        # ("bf16",): what the weights were rounded to before the engine cast
                                       # them (a VAE the host loaded at that dtype)
    tiles: int = 0                     # bands of the most finely split stage (0: untiled; 1: not split)
    tile_px: int = 0
    bands: int = 0                     # bands the image was cut into at its own resolution (0: untiled)
    band_px: tuple = ()                # (width, rows) of the tallest of them, in image pixels
    rungs_failed: list = field(default_factory=list)   # memory rungs that ran out of memory before the one that ran
    host_peak_bytes: int = None        # host memory a tiled call kept its maps in
    fallbacks: list = field(default_factory=list)   # guard.Fallback entries
    nonfinite_left: int = 0            # samples still non-finite after every fallback
    nonfinite_input: int = 0           # samples whose input was already non-finite (from the sampler)

    @property
    def tiled_after_oom(self):
        return bool(self.rungs_failed) and self.tiles > 0

    def pixel_dtypes(self):
        """The dtypes whose results are in the output: the call's own, unless the fallbacks redid every
        sample, and each fallback's dtype that kept some of what it redid."""
        produced, name = set(), self.blocks or self.dtype
        left = self.fallbacks[0].total if self.fallbacks else 1
        for fallback in self.fallbacks:
            if fallback.failed < left:
                produced.add(name)
            name, left = name_of(fallback.to_dtype), fallback.failed
        if left:
            produced.add(name)
        return produced - {""}

    @property
    def split(self):
        return self.tiles > 1


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measure(stats: CallStats, device):
    """Fills stats.seconds / peak_bytes / ram_bytes around the body.

    On CUDA the allocator's peak counter is reset here, so the figure is this call's own peak.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield stats
    finally:
        _sync(device)
        stats.seconds = time.perf_counter() - start
        if cuda:
            stats.peak_bytes = max(0, torch.cuda.max_memory_allocated(device) - base)
        stats.ram_bytes = process_resident_bytes()     # None where it cannot be read


@dataclass
class GenerationStats:
    """The VAE calls of one generation (a batch of images, hires pass and img2img encodes included)."""
    calls: list = field(default_factory=list)

    def add(self, call: CallStats):
        self.calls.append(call)

    def of_kind(self, kind):
        return [c for c in self.calls if c.kind == kind]

    def seconds(self, kind):
        return sum(c.seconds for c in self.of_kind(kind))

    def peak_bytes(self):
        peaks = [c.peak_bytes for c in self.calls if c.peak_bytes is not None]
        return max(peaks) if peaks else None

    def ram_bytes(self):
        rams = [c.ram_bytes for c in self.calls if c.ram_bytes is not None]
        return max(rams) if rams else None

    def dtypes(self):
        """The dtypes that made the results (after any NaN fallback), sorted."""
        return sorted(set().union(*(c.pixel_dtypes() for c in self.calls)))

    def kernels(self):
        return sorted({c.kernels for c in self.calls if c.kernels})

    def devices(self):
        return sorted({c.device for c in self.calls if c.device})

    def emulated(self):
        """(forced dtype, device) pairs where a dtype the device only emulates was run as another."""
        return sorted({(c.emulated, c.device) for c in self.calls if c.emulated})

    def rounded_weights(self):
        """The narrower dtypes the weights had been rounded to, where pixels came from another dtype: those
        are not that dtype's pixels (fp32 arithmetic on bf16-rounded weights)."""
        found = set()
        for call in self.calls:
            rounded = set(call.rounded_weights)
            if rounded and not rounded >= call.pixel_dtypes():
                found |= rounded
        return sorted(found)

    def bands(self):
        """(bands, width px, rows px) of the call that cut its image into the most bands, of the calls that
        were split (a tiled call that fitted in one piece was not); None where none was."""
        split = [c for c in self.calls if c.split and c.band_px]
        if not split:
            return None
        most = max(split, key=lambda c: (c.bands, -c.band_px[1]))
        return (most.bands, *most.band_px)

    def tiled_after_oom(self):
        return any(c.tiled_after_oom for c in self.calls if c.split)

    def on_cpu_after_oom(self):
        return any(c.rungs_failed and c.device == "cpu" for c in self.calls)

    def fallbacks(self):
        return [f for c in self.calls for f in c.fallbacks]

    def nonfinite(self, images=None):
        """(images still NaN/Inf after the fallbacks, images whose latent already was, images) of the
        generation, counted on the decodes that made its images: the last ones, covering `images` samples
        where the host says how many it made (a hires pass decodes its first pass too), else every decode.
        Encodes only where nothing was decoded: an encode's NaN shows in the decode of its latent."""
        calls = self.of_kind("decode") or self.calls
        if images:
            last, covered = [], 0
            for call in reversed(calls):
                if covered >= images:
                    break
                last.append(call)
                covered += call.samples
            calls = last
        return (sum(c.nonfinite_left for c in calls), sum(c.nonfinite_input for c in calls),
                sum(c.samples for c in calls))

