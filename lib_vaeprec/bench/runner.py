"""Runs the benchmark variants over sizes: plain diffusers baselines first, then VAE Precision."""
import contextlib
import copy
from dataclasses import dataclass, field

import torch

from .. import memory, outputs
from ..engine import VaeEngine
from ..options import VaeOptions
from . import measure


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: str                      # fp32/bf16/fp16/mixed (engine) or fp32/bf16/fp16 (plain)
    plain: bool = False             # plain diffusers: `vae.to(dtype)` and call, no VAE Precision
    options: VaeOptions = field(default_factory=VaeOptions)
    limited_memory: bool = False    # runs with only --free-gb of device memory free


PLAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _decode(vae, z):
    return outputs.main_tensor(vae.decode(z))


def _encode(vae, x):
    return vae.encode(x).latent_dist.mean


class _Prepared:
    """The VAE ready for one variant: a cast copy for plain baselines, the engine for ours."""

    def __init__(self, vae, variant, device):
        self.variant, self.engine, self.vae = variant, None, vae
        if variant.plain:
            self.vae = copy.deepcopy(vae).to(device, PLAIN_DTYPES[variant.dtype])
            self.dtype = PLAIN_DTYPES[variant.dtype]
        else:
            self.engine = VaeEngine(vae, variant.options).attach()
            self.dtype = torch.float32       # the engine casts the input itself

    def close(self):
        if self.engine is not None:
            self.engine.detach()
        del self.vae


@contextlib.contextmanager
def _ballast(device, free_gb):
    """Holds device memory so that only `free_gb` GB stay free: a smaller card, for tiled variants."""
    if not free_gb or device.type != "cuda":
        yield
        return
    # The cache emptied first: free memory counts the allocator's cached blocks, and after earlier runs
    # those are fragments that a whole map cannot use. In blocks, not one, for the same reason.
    memory.release_cached(device)
    block_bytes = 256 << 20
    blocks = []
    while memory.free_bytes(device) - int(free_gb * 1e9) >= block_bytes:
        blocks.append(torch.empty(block_bytes, dtype=torch.uint8, device=device))
    try:
        yield
    finally:
        blocks.clear()


def run(vae, device, sizes, variants, batch=1, warmup=1, runs=3, encode=True, seed=0, progress=None,
        free_gb=None):
    """One row per (size, operation, variant). `free_gb`: the --tiling variants run with only that
    much device memory left free."""
    rows = []
    vae = vae.to(device)
    latent_channels = vae.config.latent_channels if hasattr(vae, "config") else 4
    for size in sizes:
        generator = torch.Generator().manual_seed(seed + size)
        z = torch.randn(batch, latent_channels, size // 8, size // 8, generator=generator).to(device)
        with torch.no_grad():
            reference = _decode(vae, z).float()
            image = reference.clamp(-1, 1)
            reference_latent = _encode(vae, image).float() if encode else None
        untiled = {}
        baseline = {}
        for variant in variants:
            prepared = _Prepared(vae, variant, device)
            try:
                ops = [("decode", _decode, z, reference)]
                if encode:
                    ops.append(("encode", _encode, image, reference_latent))
                for op, call, data, ref in ops:
                    data = data.to(prepared.dtype)
                    with torch.no_grad(), _ballast(device, free_gb if variant.limited_memory else None):
                        fn = lambda: call(prepared.vae, data)  # noqa: E731
                        ms, result = measure.timed_runs(fn, device, warmup, runs)
                        peak = measure.peak_extra_bytes(fn, device)
                    rows.append(_row(size, batch, op, variant, prepared, ms, peak, result, ref, untiled, baseline,
                                     device))
                    if progress is not None:
                        progress.update(1)
            finally:
                prepared.close()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _mib(value):
    return None if value is None else round(value / 2**20, 1)


def _row(size, batch, op, variant, prepared, ms, peak, result, ref, untiled, baseline, device):
    psnr = measure.image_psnr if op == "decode" else measure.latent_psnr
    result = result.float()
    stats = prepared.engine.last_call if prepared.engine else None
    tiled = bool(stats and stats.tiles)
    row = dict(
        size=size, batch=batch, op=op, variant=variant.name, ms=round(ms, 2),
        peak_mib=None if peak is None else round(peak / 2**20, 1),
        resident_mib=_mib(measure.resident_bytes(device)),
        cached_mib=_mib(measure.cached_bytes(device)),
        device_used_mib=_mib(measure.device_used_bytes(device)),
        psnr=round(psnr(result, ref), 2), max_abs=round((result - ref).abs().max().item(), 4),
        nonfinite=measure.nonfinite_count(result), tiles=stats.tiles if stats else 0,
        dtype_used=stats.dtype if stats else variant.dtype,
        fallbacks=[str(f) for f in stats.fallbacks] if stats else [],
    )
    key = (op, row["dtype_used"])
    if not tiled and not variant.plain:
        untiled.setdefault(key, result.cpu())
    elif tiled and key in untiled:
        row["psnr_vs_untiled"] = round(psnr(result, untiled[key].to(result.device)), 2)
    if variant.plain and variant.dtype == "fp32":
        baseline[op] = row
    base = baseline.get(op)
    if base:
        row["x_time"] = round(row["ms"] / base["ms"], 3)
        if row["peak_mib"] is not None and base["peak_mib"]:
            row["x_peak"] = round(row["peak_mib"] / base["peak_mib"], 3)
    return row
