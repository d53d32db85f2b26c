"""Seamless tiled decode and encode for SD-family VAEs (4 or 16 latent channels), any size, any batch,
in whatever memory there is.

The coder (decoder or encoder) runs stage by stage (layout.py), each stage band by band over whole maps
(runner.py), every GroupNorm with the statistics of its whole input: the result equals the untiled one up
to float rounding. Before any work, plan.py decides where each whole map lives (device, host memory,
recomputed on the fly, written over its input) from free device memory and host RAM, so device memory is
bounded by the budget, not by the image. The mid block's attention runs over the bands too (attention.py).

The module is still driven through its own decode/encode (`original`): only the coder's forward is
replaced for the call, so post_quant_conv/quant_conv and whatever the host wraps around them run as usual.
"""
import logging

import torch

from ..forward_override import Replaced
from ..outputs import main_tensor
from .layout import layout_of
from .plan import (FIRST_CALL_RESERVE, MIN_TILE, SCALE, UNTILED_SHARE, Plan, PlanError, fits_untiled,  # noqa: F401
                   make_plan, untiled_bytes)
from .maps import spans
from .plan import _full_resolution_channels
from .runner import StageRunner

log = logging.getLogger("vae_precision")

__all__ = ["run_tiled", "plan_for", "why_untileable", "Plan", "PlanError", "fits_untiled", "untiled_bytes", "SCALE", "MIN_TILE",
           "UNTILED_SHARE", "first_call_reserve", "note_call_ran", "release_host_memory"]

_RAN_ON = set()      # CUDA devices a call has run on in this process: their libraries are loaded


def first_call_reserve(device):
    """Device memory a plan leaves aside for what a first call on `device` takes outside its tensors."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return 0 if _device_key(device) in _RAN_ON else FIRST_CALL_RESERVE


def note_call_ran(device):
    device = torch.device(device)
    if device.type == "cuda":
        _RAN_ON.add(_device_key(device))


def _device_key(device):
    return device.index if device.index is not None else torch.cuda.current_device()


def release_host_memory():
    """Hands back the pinned host memory kept for the maps of later calls."""
    from .maps import HOST_BLOCKS
    HOST_BLOCKS.release()


def _wraps_around(coder):
    return any(isinstance(m, torch.nn.Conv2d) and m.padding_mode != "zeros" for m in coder.modules())


def why_untileable(module, kind):
    """Why this VAE's coder cannot be tiled (a sentence), or None when it can."""
    part = "decoder" if kind == "decode" else "encoder"
    if layout_of(module, kind) is None:
        return f"its {part} ({type(getattr(module, part, None)).__name__}) has a layout tiling does not know"
    if _wraps_around(getattr(module, part)):
        # A1111's seamless "Tiling" option pads convs circularly: tiles cannot reproduce that wrap.
        return f"its {part}'s convs pad circularly (seamless texture)"
    return None


def plan_for(module, kind, x, tile_px=0, lean=False, **budget):
    """The plan of a tiled call of a tileable VAE (see why_untileable). Raises PlanError when the maps fit
    nowhere. `budget`: make_plan's free_bytes, host_free, host_maps, ceiling, reserve."""
    layout = layout_of(module, kind)
    return make_plan(layout, kind, x, tile_px=tile_px, lean=lean, **budget)


def image_bands(module, kind, plan, runner, x, result):
    """(bands, (width, rows)): how the image's own resolution, at its channel count there, was cut (the
    bands the stages at full resolution ran in, in image pixels: what a tile size changes)."""
    image = main_tensor(result) if kind == "decode" else x
    n, _, height, width = image.shape
    rows = runner.band_rows(_full_resolution_channels(module, kind), width, n)
    cuts = spans(height, rows, 0)
    return len(cuts), (width, max(b - a for a, b, _, _ in cuts))


def run_tiled(original, module, kind, plan, x, args, kwargs, stats):
    """`original(x, *args, **kwargs)` with the coder's forward replaced by its planned stage-wise run."""
    coder = getattr(module, "decoder" if kind == "decode" else "encoder")
    runner = StageRunner(plan)
    with Replaced(coder, lambda h, *a, **k: runner.run(plan.layout, h)):
        result = original(x, *args, **kwargs)
    stats.tiles += runner.most_bands
    stats.tile_px = plan.tile_px
    stats.bands, stats.band_px = image_bands(module, kind, plan, runner, x, result)
    if plan.host_bytes:
        stats.host_peak_bytes = max(stats.host_peak_bytes or 0, plan.host_bytes)
    trades = plan.trades()
    if trades:
        log.info("VAE Precision: tiled %s fitted to memory with: %s", kind, ", ".join(trades))
    return result
