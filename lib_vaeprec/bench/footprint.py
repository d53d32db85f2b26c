"""What a bench run needs in memory, estimated before it starts.

A size or batch that cannot fit is refused in one line up front, instead of a process killed minutes
later. Tiled rows are built for images that do not fit untiled, so at such a size only the untiled
rows are left out (and the fp32 reference is made tiled); the size is refused only when no row at all
could run there.
"""
from dataclasses import dataclass, field

import torch

from .. import memory, tiling

# Untiled peaks of the SD VAE, in full-resolution maps (full-resolution channels x pixels x itemsize x
# batch), as measured by this bench (docs/benchmarks.md): from 5 (strict fp32 encode on the H100) to
# 9.5 (plain diffusers decode in 16 bits, or fp32 with TF32); 8.2 for an fp32 decode on a CPU.
LEAST_PEAK_MAPS = 5.0
MOST_PEAK_MAPS = 10.0
# What the bench itself holds per size besides the VAE's own work: the latents, the fp32 reference
# image and its clamped copy, the row's result and the PSNR's temporaries, in fp32 images.
BENCH_IMAGES = 7


def gb(n_bytes):
    return f"{n_bytes / 1e9:.1f} GB"


@dataclass
class Plan:
    skipped: dict = field(default_factory=dict)     # (size, variant name) -> why it is not run
    tiled_reference: set = field(default_factory=set)  # sizes whose fp32 reference is made tiled
    notes: list = field(default_factory=list)       # one line per size with skipped rows


class DoesNotFit(Exception):
    pass


def _channels(vae, op):
    """Channels at image resolution (128 in the SD VAE)."""
    if op == "decode":
        return vae.decoder.conv_out.in_channels
    return vae.encoder.conv_in.out_channels


def _itemsize(dtype, most):
    # mixed keeps GroupNorm and the output conv in fp32: counted as 16-bit for the least, fp32 for the most
    return 4 if dtype == "fp32" or (dtype == "mixed" and most) else 2


def image_bytes(size, batch):
    return batch * 3 * size * size * 4


def untiled_bytes(vae, op, dtype, size, batch, most):
    maps = MOST_PEAK_MAPS if most else LEAST_PEAK_MAPS
    return int(maps * _channels(vae, op) * size * size * _itemsize(dtype, most) * batch)


def tiled_floor_bytes(size, batch):
    """The least a tiled call needs on the device besides the bench's tensors: its fp32 result (the
    whole maps of a stage may be held in host memory)."""
    return image_bytes(size, batch)


def plan(vae, device, sizes, batch, variants, ops, free_bytes=None, host_free_bytes=None):
    """Which rows fit, against the memory free now. On CUDA, where running out of memory is an error
    the runner records as a row, a row is left out only when it certainly does not fit (the least
    estimate); elsewhere running out can end the process, so the most estimate decides."""
    cuda = device.type == "cuda"
    free = memory.free_bytes(device) if free_bytes is None else free_bytes
    if cuda:
        free -= sum(p.numel() * p.element_size() for p in vae.parameters())   # the weights go there first
    host_free = memory.free_bytes("cpu") if host_free_bytes is None else host_free_bytes
    where = f"{gb(max(free, 0))} free on {device}" if cuda else f"{gb(max(free, 0))} of memory available"
    most = not cuda
    result = Plan()
    for size in sizes:
        own = BENCH_IMAGES * image_bytes(size, batch)
        # the untiled results are kept on the host for the tiled rows' PSNRtile
        kept = sum(1 for v in variants if v.runs_at(size) and not v.is_tiled) * len(ops) * image_bytes(size, batch)
        # on a CPU the bench's tensors, the kept results and the VAE's work share one memory
        own = own if cuda else own + kept
        host_need = kept if cuda else own
        if host_need > host_free:
            raise DoesNotFit(f"--sizes {size} with --batch {batch} needs about {gb(host_need)} of host memory "
                             f"for the images alone, and {gb(host_free)} is available")
        reference_need = own + max(untiled_bytes(vae, op, "fp32", size, batch, most) for op in ops)
        # Off CUDA no rung follows a tiled plan that finds no room: ask the planner itself, before any work.
        no_room = None if cuda else _tiled_refusal(vae, ops, size, batch, free - own)
        if reference_need > free:
            result.tiled_reference.add(size)
            if no_room:
                raise DoesNotFit(f"--sizes {size} with --batch {batch} cannot fit: the fp32 reference needs about "
                                 f"{gb(reference_need)} untiled, {where}, and tiled {no_room}")
        needs, left_out = [], []
        for variant in variants:
            if not variant.runs_at(size):
                continue
            if variant.is_tiled:
                need = own + tiled_floor_bytes(size, batch)
                if no_room:
                    result.skipped[(size, variant.name)] = f"skipped: tiled {no_room}"
                    left_out.append(variant.name)
                    needs.append(need)
                    continue
            else:
                need = own + max(untiled_bytes(vae, op, variant.dtype, size, batch, most) for op in ops)
            needs.append(need)
            if need > free:
                result.skipped[(size, variant.name)] = f"skipped: needs about {gb(need)}, {where}"
                left_out.append(variant.name)
        if needs and len(left_out) == len(needs):
            hint = "" if any(v.is_tiled for v in variants) else "; --tiling on runs tiled rows, which need less"
            raise DoesNotFit(f"--sizes {size} with --batch {batch} cannot fit: even the leanest row needs about "
                             f"{gb(min(needs, default=own))}, {where}{hint}")
        if left_out:
            result.notes.append(f"{size}px: not run, as they would not fit untiled ({where}): "
                                + ", ".join(left_out))
    return result


def _tiled_refusal(vae, ops, size, batch, free):
    """Why a tiled call of this size would find no room in `free` bytes, even holding the least (the
    planner's own line), or None."""
    for op in ops:
        if tiling.why_untileable(vae, op):
            continue
        channels = vae.config.latent_channels if op == "decode" else 3
        side = size // tiling.SCALE if op == "decode" else size
        x = torch.empty(batch, channels, side, side, device="meta")
        try:
            # the least-memory plan reads no free memory (it is the rung for a reading that proved wrong):
            # its need is held against `free` here
            plan = tiling.plan_for(vae, op, x, lean=True, free_bytes=max(free, 0), host_free=max(free, 0),
                                   host_maps=False)
        except tiling.PlanError as error:
            return f"its {op}: {error}"
        if plan.device_need > free:
            need, have = tiling.plan._sizes(plan.device_need, max(free, 0))
            return f"its {op}: its maps and work need {need} of memory and {have} is there for them"
    return None

