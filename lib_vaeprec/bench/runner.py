"""Runs the benchmark variants over sizes: plain diffusers baselines first, then VAE Precision."""
import contextlib
import copy
from dataclasses import dataclass, field

import torch

from .. import memory, outputs, tiling
from ..engine import VaeEngine
from ..options import VaeOptions
from . import measure

# TF32 as the web UIs run fp32 convolutions and matmuls on CUDA: cuDNN's TF32 is torch's default
# (torch.backends.cudnn.allow_tf32) and none of the three hosts turns it off; A1111 also turns matmul
# TF32 on (modules/devices.py, enable_tf32), Forge and reForge keep torch's default for matmuls (off),
# which in this VAE touches only the mid block's attention projections.
HOSTS_TF32 = True


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: str                      # fp32/bf16/fp16/mixed (engine) or fp32/bf16/fp16 (plain)
    plain: bool = False             # plain diffusers: `vae.to(dtype)` and call, no VAE Precision
    options: VaeOptions = field(default_factory=VaeOptions)
    limited_memory: bool = False    # runs with only --free-gb of device memory free
    tf32: bool = None               # CUDA: TF32 for fp32 convs/matmuls; None = the run's setting
    tiled: bool = False             # plain: diffusers' own tiling (`vae.enable_tiling()`), seams and all
    tile_px: int = 0                # plain tiled: diffusers' tile size in pixels (0: its default)
    sizes: tuple = ()               # run at these sizes only (empty: every size)

    def runs_at(self, size):
        return not self.sizes or size in self.sizes

    @property
    def is_tiled(self):
        return self.tiled or (not self.plain and self.options.tiling != "off")


PLAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _decode(vae, z):
    return outputs.main_tensor(vae.decode(z))


def _encode(vae, x):
    return vae.encode(x).latent_dist.mean


@contextlib.contextmanager
def tf32(device, allowed):
    """TF32 for fp32 convolutions and matmuls on CUDA for the body, then both switches as they were."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(allowed)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def diffusers_tiles(vae, op, shape):
    """How many tiles diffusers' `enable_tiling()` splits an input of `shape` into (0: it does not tile).
    Its rule (AutoencoderKL._decode/_encode in diffusers): tiles of tile_latent_min_size latent or
    tile_sample_min_size image pixels, started every (1 - tile_overlap_factor) of a tile, only when a
    side is larger than one tile."""
    tile = vae.tile_latent_min_size if op == "decode" else vae.tile_sample_min_size
    height, width = shape[-2:]
    if not vae.use_tiling or (height <= tile and width <= tile):
        return 0
    stride = int(tile * (1 - vae.tile_overlap_factor))
    return len(range(0, height, stride)) * len(range(0, width, stride))


class _Prepared:
    """The VAE ready for one variant: a cast copy for plain baselines, the engine for ours."""

    def __init__(self, vae, variant, device):
        self.variant, self.engine, self.vae = variant, None, vae
        self.calls = []                      # CallStats of every call, the untimed first one included
        if variant.plain:
            self.vae = copy.deepcopy(vae).to(device, PLAIN_DTYPES[variant.dtype])
            self.dtype = PLAIN_DTYPES[variant.dtype]
            if variant.tiled:
                self.vae.enable_tiling()
                if variant.tile_px:
                    self.vae.tile_sample_min_size = variant.tile_px
                    self.vae.tile_latent_min_size = variant.tile_px // 8
        else:
            self.engine = VaeEngine(vae, variant.options, on_call=self.calls.append).attach()
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


@contextlib.contextmanager
def _allocator_cap(device, cap_gb):
    """torch's allocator limited to `cap_gb` GB above what the process holds now
    (torch.cuda.set_per_process_memory_fraction): a limit free memory readings do not show."""
    if not cap_gb or device.type != "cuda":
        yield
        return
    memory.release_cached(device)
    index = device.index if device.index is not None else torch.cuda.current_device()   # it takes no "cuda"
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, (torch.cuda.memory_reserved(index) + cap_gb * 1e9) / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


def _reference(vae, z, encode, device, tiled, tile_px):
    """The fp32 decode (and encode of its clamped image) that every PSNR compares with: strict fp32
    (no TF32), untiled; tiled with VAE Precision's fp32 tiling (equal to untiled up to float rounding)
    where the untiled call cannot fit. Returns (decoded, image, latent, how it was made)."""
    with torch.no_grad(), tf32(device, False):
        if not tiled:
            try:
                decoded = _decode(vae, z).float()
                image = decoded.clamp(-1, 1)
                return decoded, image, _encode(vae, image).float() if encode else None, "untiled"
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled here
                if not memory.is_out_of_memory(error):
                    raise
            memory.release_cached(device)
        engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always", tile_size=tile_px,
                                           nan_fallback=False)).attach()
        try:
            decoded = _decode(vae, z).float()
            image = decoded.clamp(-1, 1)
            return decoded, image, _encode(vae, image).float() if encode else None, "tiled"
        finally:
            engine.detach()


def run(vae, device, sizes, variants, batch=1, warmup=1, runs=3, encode=True, seed=0, progress=None,
        free_gb=None, skipped=None, tiled_reference=(), reference_tile_px=0, baseline=None, say=print,
        tf32_rows=HOSTS_TF32, cap_gb=None, reference_after=False):
    """One row per (size, operation, variant). `free_gb`: the limited_memory variants run with only
    that much device memory left free; `cap_gb`: with torch's allocator capped at that much. `skipped`:
    {(size, variant name): why} rows not run (they would not fit); `tiled_reference`: sizes whose fp32
    reference is made tiled. `baseline`: the variant the x columns compare with. `tf32_rows`: TF32 on
    CUDA for the variants that do not set their own. `reference_after` (decode only): the rows run
    first, so the first of them is the process's first call, and the reference is made after them
    ("none": not at all, the rows have no psnr)."""
    skipped = skipped or {}
    rows = []
    vae = vae.to(device)
    latent_channels = vae.config.latent_channels if hasattr(vae, "config") else 4
    ops = ["decode"] + (["encode"] if encode and not reference_after else [])
    for size in sizes:
        generator = torch.Generator().manual_seed(seed + size)
        z = torch.randn(batch, latent_channels, size // 8, size // 8, generator=generator).to(device)
        made = None
        if reference_after:
            reference = image = reference_latent = None
        else:
            reference, image, reference_latent, made = _reference(vae, z, encode, device, size in tiled_reference,
                                                                  reference_tile_px)
        if made == "tiled":
            say(f"{size}px: the fp32 reference was made tiled (VAE Precision's exact tiling): "
                "untiled it does not fit")
        untiled, results = {}, []
        for variant in variants:
            if not variant.runs_at(size):
                continue
            if (size, variant.name) in skipped:
                for op in ops:
                    rows.append(_failed_row(size, batch, op, variant, skipped[(size, variant.name)]))
                    _advance(progress)
                continue
            prepared = _Prepared(vae, variant, device)
            try:
                for op in ops:
                    call, data, ref = (_decode, z, reference) if op == "decode" else (_encode, image, reference_latent)
                    allowed = tf32_rows if variant.tf32 is None else variant.tf32
                    limited = variant.limited_memory
                    row = _measure(prepared, op, call, data.to(prepared.dtype), ref, size, batch, warmup, runs,
                                   device, free_gb if limited else None, untiled, allowed,
                                   cap_gb if limited else None,
                                   keep=results if reference_after and reference_after != "none" else None)
                    if made == "tiled":
                        row["reference_tiled"] = True
                    rows.append(row)
                    _advance(progress)
            finally:
                prepared.close()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if reference_after and reference_after != "none":
            _compare_after(vae, z, device, size in tiled_reference, reference_tile_px, results, say)
    add_ratios(rows, baseline)
    return rows


def _compare_after(vae, z, device, tiled, tile_px, results, say):
    """The PSNR and largest error of rows run before their reference: [(row, result on the host)]."""
    reference, _image, _latent, made = _reference(vae, z, False, device, tiled, tile_px)
    if made == "tiled":
        say("the fp32 reference was made tiled (VAE Precision's exact tiling): untiled it does not fit")
    for row, result in results:
        result = result.to(reference.device)
        row["psnr"] = _round(measure.image_psnr(result, reference), 2)
        row["max_abs"] = _round(measure.max_abs_error(result, reference), 4)
        if made == "tiled":
            row["reference_tiled"] = True
    results.clear()


def _advance(progress):
    if progress is not None:
        progress.update(1)


def _measure(prepared, op, call, data, ref, size, batch, warmup, runs, device, free_gb, untiled, allowed_tf32,
             cap_gb=None, keep=None):
    """One row. `keep`: a list the row and its result (on the host) go to, for a reference made later."""
    variant = prepared.variant
    out_of_memory = False
    prepared.calls.clear()
    with torch.no_grad(), tf32(device, allowed_tf32), _ballast(device, free_gb), _allocator_cap(device, cap_gb):
        try:
            timing = measure.timed_runs(lambda: call(prepared.vae, data), device, warmup, runs)
        except tiling.PlanError as error:     # no rung after it (off CUDA): one line in the row, no traceback
            return _failed_row(size, batch, op, variant, f"does not fit: {' '.join(str(error).split())}")
        except Exception as error:  # noqa: BLE001 - only out-of-memory is recorded as a row
            if not memory.is_out_of_memory(error):
                raise
            out_of_memory = True
    if out_of_memory:
        # Outside the except block: the failed call's frames and their tensors are gone by now.
        memory.release_cached(device)
        return _failed_row(size, batch, op, variant, "out of memory")
    row = _row(size, batch, op, prepared, timing, ref, untiled, device, data.shape, allowed_tf32)
    if keep is not None:
        keep.append((row, outputs.main_tensor(timing.result).float().cpu()))
    return row


def _mib(value):
    return None if value is None else round(value / 2**20, 1)


def _round(value, digits):
    return None if value is None else round(value, digits)


def _failed_row(size, batch, op, variant, why):
    return dict(size=size, batch=batch, op=op, variant=variant.name, plain=variant.plain, tiled=variant.is_tiled,
                error=why)


def _row(size, batch, op, prepared, timing, ref, untiled, device, input_shape, allowed_tf32):
    variant = prepared.variant
    psnr = measure.image_psnr if op == "decode" else measure.latent_psnr
    result = outputs.main_tensor(timing.result).float()
    stats = prepared.engine.last_call if prepared.engine else None
    if variant.plain:
        tiles = diffusers_tiles(prepared.vae, op, input_shape) if variant.tiled else 0
        tile_px = prepared.vae.tile_sample_min_size if tiles else 0
    else:
        tiles, tile_px = (stats.tiles, stats.tile_px) if stats else (0, 0)
    row = dict(
        size=size, batch=batch, op=op, variant=variant.name, plain=variant.plain, tiled=variant.is_tiled,
        ms=round(timing.ms, 2), first_ms=round(timing.first_ms, 2), peak_mib=_mib(timing.peak_bytes),
        host_peak_mib=_mib(getattr(stats, "host_peak_bytes", None)),
        resident_mib=_mib(measure.resident_bytes(device)),
        cached_mib=_mib(measure.cached_bytes(device)),
        device_used_mib=_mib(measure.device_used_bytes(device)),
        psnr=_round(psnr(result, ref), 2) if ref is not None else None,
        max_abs=_round(measure.max_abs_error(result, ref), 4) if ref is not None else None,
        nonfinite=measure.nonfinite_count(result), tiles=tiles, tile_px=tile_px,
        dtype_used=stats.dtype if stats else variant.dtype,
        kernels=(stats.kernels or None) if stats else None,       # "triton": the fused blocks ran
        fallbacks=[str(f) for f in stats.fallbacks] if stats else [],
    )
    if prepared.calls:
        # every rung that ran out of memory or did not fit, in any call of the row (the first one included)
        row["rungs_failed"] = [f"{c.kind} call {i + 1}: {r}" for i, c in enumerate(prepared.calls)
                               for r in c.rungs_failed]
        row["ran_on"] = sorted({c.device for c in prepared.calls})
    if device.type == "cuda":
        row["tf32"] = allowed_tf32
    # PSNRtile: a tiled result against the untiled one of the same dtype and the same code (ours
    # against ours, diffusers' tiling against plain diffusers), or the other's when that is missing.
    # The first untiled row of a kind is kept: fp32 with TF32 comes before strict fp32.
    key = (op, row["dtype_used"])
    if not tiles and not variant.is_tiled:
        untiled.setdefault((*key, variant.plain), result.cpu())
    elif tiles:
        same = untiled.get((*key, variant.plain), untiled.get((*key, not variant.plain)))
        if same is not None:
            row["psnr_vs_untiled"] = _round(psnr(result, same.to(result.device)), 2)
    return row


def add_ratios(rows, baseline):
    """x_time and x_peak of every row against the `baseline` variant's row of the same size and op."""
    if baseline is None:
        return
    base = {(r["size"], r["op"]): r for r in rows if r["variant"] == baseline and "error" not in r}
    for row in base.values():
        row["baseline"] = True
    for row in rows:
        ref = base.get((row["size"], row["op"]))
        if ref is None or "error" in row:
            continue
        row["x_time"] = round(row["ms"] / ref["ms"], 3)
        if row.get("peak_mib") is not None and ref.get("peak_mib"):
            row["x_peak"] = round(row["peak_mib"] / ref["peak_mib"], 3)
