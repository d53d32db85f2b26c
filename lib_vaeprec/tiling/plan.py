"""Deciding, before any work, where every whole map of a tiled run lives, and what memory that takes.

The budget is free device memory (the allocator's cache counted as free) and available host RAM. Maps
are placed stage by stage, cheapest first:
- on the device (free to read), with a resnet's conv1 output kept for norm2's statistics;
- on the device with that conv1 output recomputed instead (one more conv per band);
- written over the stage's own input (`in place`, a map fewer);
- for an upsampler's output or the encoder's first conv (cheap to compute from a smaller source):
  never held, recomputed from the source for every band that reads it (`on the fly`);
- in pinned host memory, copied in and out band by band beside the compute (`host memory`), where host
  memory is a separate pool (beside a GPU).
The mid block attention's keys and values stay whole on the device where there is room, else they wait in
host memory and are read back in chunks (`keys and values in host memory`, attention.py).
A map that fits nowhere, or host maps that would not fit the host's available RAM, make the plan fail
with one line naming the figures (PlanError): the caller then takes the next rung of its ladder.

The least-memory plan (`lean`) does not read free memory at all: it is what the ladder falls back on
after an out-of-memory error, when the reading is known to be wrong. Its bands are a fixed size
(LEAST_WORK_BYTES) and every map goes where it takes the least device memory; where maps can wait in
host memory, what it needs on the device does not grow with the image's area.
"""
import math
from dataclasses import dataclass, field

import torch

from .. import memory
from .layout import out_channels, out_size
from . import maps
from .maps import map_bytes

SCALE = 8                 # pixels per latent pixel in the SD-family VAEs
FULL_RES_CHANNELS = 128   # channels of the SD VAE at image resolution: a tile's area is counted at this width
MIN_TILE = 8              # latent pixels (64 image pixels, the smallest tile option)
MAPS_SHARE = 0.5          # of free device memory, for the whole maps held at once
WORK_SHARE = 0.25         # of free device memory, for one band's work (its activations and halos)
LEAST_WORK_BYTES = 256 << 20   # one band's work in the least-memory plan, whatever the reading says
KV_CHUNK_SHARE = 0.25     # of a band's work, for one chunk of keys and values read from host memory (two
                          # are on the device at once: the one in use and the next, being copied)
# Device memory a first call in the process takes outside the plan's tensors: CUDA loads the kernels of
# each library on their first use, and cuDNN and cuBLAS make their handles and workspaces.
FIRST_CALL_RESERVE = 384 << 20
WORK_BANDS = 8            # band-sized tensors alive at once while a resnet band is computed
HOST_SHARE = 0.8          # of available host RAM, for maps kept in pinned host memory
MIN_BAND_ROWS = 16        # below this a band's 1-2 halo rows on each side cost too much recomputing
CHEAP_CONV_RATIO = 4      # a conv whose input has this many times fewer channels is recomputed, never stored


class PlanError(Exception):
    """No placement of the maps fits the memory there is (the message says what was short)."""


@dataclass
class StagePlan:
    kind: str                   # layout stage kind, or "out" for norm_out -> conv_out
    module: torch.nn.Module
    shape: tuple = None         # the stage's output map (N, C, H, W)
    where: str = "device"       # "device", "host", "in place" (over its input) or "on the fly"
    keep_h: bool = False        # resnets: conv1's output held on the device for norm2's statistics
    dtype: torch.dtype = None   # what the stage computes in (its weights'): bands are cast to it
    channels_last: bool = False  # bands go channels_last (the decoder body, as fast_groupnorm runs it)
    kv_chunk: int = 0           # attention: positions per chunk of keys and values read back from host
                                # memory (0: both whole on the device)


@dataclass
class Plan:
    stages: list = field(default_factory=list)
    band_elems: int = 0          # elements of one band (all samples and channels), about one tile's
    work_bytes: int = 0          # device memory for one band's work; the attention's chunks of scores get
                                 # this too, no more (a 2048² encode with 2 GB free ran out of memory when
                                 # they took what the maps left, H100)
    device_bytes: int = 0        # device memory the maps need at most
    host_bytes: int = 0          # host memory the maps need at most
    device: torch.device = None
    samples: int = 1
    layout: object = None        # the coder's layout.Layout the stages come from
    reserve: int = 0             # device memory set aside for what a first call takes outside the plan

    @property
    def device_need(self):
        """What the plan asks of the device at most: its maps and one band's work."""
        return self.device_bytes + self.work_bytes

    @property
    def tile_px(self):
        """The side of a square tile of 128 channels with as many elements as a band (for reports)."""
        return int(math.sqrt(self.band_elems / max(1, self.samples) / FULL_RES_CHANNELS))

    def trades(self):
        """What the plan gave up for memory, for the log."""
        found = {s.where for s in self.stages} - {"device"}
        if any(s.kind == "resnet" and not s.keep_h for s in self.stages):
            found.add("conv1 recomputed")
        if any(s.kv_chunk for s in self.stages):
            found.add("keys and values in host memory")
        return sorted(found)


def _dtype_of(module, default):
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight.is_floating_point():
            return m.weight.dtype
    return default


class _Held:
    """Where the map between two stages is: bytes on the device and in host memory, and whether it is
    stored (a device tensor or a host map) or computed on the fly from a stored source."""

    def __init__(self, shape, dtype, device_bytes, host_bytes=0, stored=True):
        self.shape, self.dtype = shape, dtype
        self.device_bytes, self.host_bytes, self.stored = device_bytes, host_bytes, stored


@dataclass
class _Option:
    where: str
    device_bytes: int            # device memory while the stage runs
    keep_h: bool = False
    fits_too: bool = True        # a further condition of this option (an upsampler's look-ahead)
    kv_chunk: int = 0            # attention: keys and values in host memory, read in chunks of this many
    host_bytes: int = 0          # host memory the stage holds while it runs besides the maps (keys, values)


def make_plan(layout, kind, x, free_bytes=None, host_free=None, tile_px=0, lean=False, host_maps=None,
              ceiling=None, reserve=0):
    """The plan for running `layout` (of a decoder or encoder, `kind`) on input `x`.

    `tile_px`: the band size as a square tile's side in pixels (0: from free memory). `lean`: the
    least-memory plan, which reads no free memory (see above; the last rung before the CPU). `host_maps`:
    whether maps may go to host memory (default: where that is a pool of its own, beside a GPU).
    `ceiling`: plan as if at most this much were free (the untiled call's estimate: a tiled call never
    takes more than that). `reserve`: device memory to leave aside (FIRST_CALL_RESERVE on a first call)."""
    device = x.device
    itemsize = x.element_size()
    samples = x.shape[0]
    smallest = (MIN_TILE * SCALE) ** 2 * FULL_RES_CHANNELS * samples
    if lean:
        free = math.inf
    else:
        free = memory.free_bytes(device) if free_bytes is None else free_bytes
        free = min(free, ceiling) if ceiling else free
        free = max(0, free - reserve)
    host_free = memory.host_available_bytes() if host_free is None else host_free
    host_free += maps.HOST_BLOCKS.idle_bytes()          # kept pinned blocks serve this call's maps
    if tile_px:
        band_elems = tile_px ** 2 * FULL_RES_CHANNELS * samples
        if lean:   # the size asked for ran out of memory: half the band, never below the smallest one
            band_elems = max(band_elems // 2, min(band_elems, smallest))
    elif lean:
        band_elems = max(smallest, LEAST_WORK_BYTES // (WORK_BANDS * itemsize))
    else:
        band_elems = max(smallest, int(WORK_SHARE * free / (WORK_BANDS * itemsize)))
    band_elems = _whole_maps_if_one_tile(band_elems, layout, x.shape)
    plan = Plan(band_elems=band_elems, work_bytes=WORK_BANDS * _widest_band(band_elems, layout, x.shape) * itemsize,
                device=device, samples=samples, layout=layout, reserve=reserve)
    budget = math.inf if lean else MAPS_SHARE * free
    host_allowed = device.type == "cuda" if host_maps is None else host_maps
    # Keys and values streamed from host memory read them once per band: only where they cannot stay whole
    # on the device (with every other map placed around them), or with the least memory.
    try:
        _place(plan, layout, kind, x, budget, lean, host_allowed, stream_kv=lean and host_allowed)
    except PlanError:
        if lean or not host_allowed:
            raise
        _place(plan, layout, kind, x, budget, lean, host_allowed, stream_kv=True)
    if plan.host_bytes > HOST_SHARE * host_free:
        need, have = _sizes(plan.host_bytes, HOST_SHARE * host_free)
        raise PlanError(f"its maps need {need} of host memory and {have} is there for them")
    return plan


def _place(plan, layout, kind, x, budget, lean, host_allowed, stream_kv):
    """Where each stage's output goes, stage by stage (plan.stages, device_bytes, host_bytes), or PlanError."""
    plan.stages = []
    device_peak = host_peak = 0
    held = _Held(tuple(x.shape), x.dtype, 0)          # the input belongs to the caller
    dtype = x.dtype
    steps = [StagePlan(k, m) for k, m in layout.stages] + [StagePlan("out", layout.conv_out)]
    for i, step in enumerate(steps):
        dtype = _dtype_of(step.module, dtype)
        step.dtype, step.channels_last = dtype, kind == "decode" and i >= layout.body_start
        step.shape = _out_shape(step, held.shape)
        following = steps[i + 1] if i + 1 < len(steps) else None
        out_b = map_bytes(step.shape, dtype)
        limits = (host_allowed, budget, plan.work_bytes, stream_kv)
        options = _options(step, held, out_b, following, *limits)
        next_need = {id(o): _next_need(o, step, held, out_b, following, *limits) for o in options}
        # The output is the caller's: on the device wherever it fits (the least-memory plan knows no fit).
        chosen = _choose(options, budget, lean, lambda o: next_need[id(o)] <= budget)
        if chosen is None:
            least = min(options, key=lambda o: max(o.device_bytes, next_need[id(o)]))
            short = step if least.device_bytes >= next_need[id(least)] else following
            need, have = _sizes(max(least.device_bytes, next_need[id(least)]), budget)
            pool = "memory" if x.device.type == "cpu" else "device memory"      # on the CPU: host RAM
            raise PlanError(f"its {short.kind} stage needs {need} of {pool} for maps and {have} is there for them")
        step.where, step.keep_h, step.kv_chunk = chosen.where, chosen.keep_h, chosen.kv_chunk
        after, added_host = _after(step, held, out_b)
        device_peak = max(device_peak, chosen.device_bytes)
        host_peak = max(host_peak, held.host_bytes + added_host + chosen.host_bytes)
        held = after
        plan.stages.append(step)
    plan.device_bytes, plan.host_bytes = int(device_peak), int(host_peak)


def _widest_band(band_elems, layout, shape):
    """Elements of the largest band a pass makes: a band has MIN_BAND_ROWS rows at least, and up to 2 halo
    rows on each side, so at a large width it holds more than `band_elems` (runner.band_rows)."""
    shapes = [tuple(shape)]
    for kind, module in layout.stages + [("conv", layout.conv_out)]:
        shapes.append(_shape_after(kind, module, shapes[-1]))
    return max(band_elems, max((MIN_BAND_ROWS + 4) * n * c * w for n, c, _h, w in shapes))


def _whole_maps_if_one_tile(band_elems, layout, shape):
    """A band holding every whole map where the image is no larger than one tile, so it runs in one piece
    (a tile counts 128 channels a pixel; the SD decoder's 256-channel maps at full resolution would
    otherwise be cut in two)."""
    shapes = [tuple(shape)]
    for kind, module in layout.stages + [("conv", layout.conv_out)]:
        shapes.append(_shape_after(kind, module, shapes[-1]))
    image_px = max(h * w for _, _, h, w in shapes)
    if image_px * FULL_RES_CHANNELS * shape[0] > band_elems:
        return band_elems
    return max(band_elems, max(math.prod(s) for s in shapes))


def _out_shape(step, shape):
    return _shape_after("conv" if step.kind == "out" else step.kind, step.module, shape)


def _shape_after(kind, module, shape):
    """The output shape of a stage of `kind` run by `module` on a map of `shape`."""
    n, c, h, w = shape
    return (n, out_channels(kind, module) or c) + out_size(kind, h, w)


def _options(step, held, out_b, following, host_allowed, budget, work_bytes, stream_kv):
    """Where a stage's output can go, cheapest first, each with the device memory it takes meanwhile."""
    in_dev = held.device_bytes
    in_place = held.stored and tuple(held.shape) == step.shape and held.dtype == step.dtype
    kind, module = step.kind, step.module
    options = []
    if kind == "out":          # the coder's output (an image or latent moments): the caller's result
        return [_Option("device", in_dev + out_b)] + ([_Option("host", in_dev)] if host_allowed else [])
    if kind == "resnet":
        # Recomputing a resnet's output on the fly instead of keeping it in host memory measured slower
        # (H100, 4096² decode with 2 GB free: 4.3 s against 3.0 s): only cheap stages are recomputed.
        h_b = map_bytes((step.shape[0], module.conv1.out_channels) + step.shape[2:], step.dtype)
        for where, extra, allowed in (("device", out_b, True), ("in place", 0, in_place),
                                      ("host", 0, host_allowed)):
            if allowed:
                options += [_Option(where, in_dev + extra + h_b, keep_h=True), _Option(where, in_dev + extra)]
        return options
    if kind == "attention":
        # Keys and values whole on the device (2 maps), or in host memory with two chunks of them on the
        # device (the one in use and the next, being copied).
        placements = [(2 * out_b, 0, 0)]
        if stream_kv:
            chunk = kv_chunk_positions(step.shape, step.dtype, work_bytes)
            placements.append((2 * kv_chunk_bytes(step.shape, step.dtype, chunk), chunk, 2 * out_b))
        for kv, chunk, kv_host in placements:
            for where, extra, allowed in (("device", out_b, True), ("in place", 0, in_place),
                                          ("host", 0, host_allowed)):
                if allowed:
                    options.append(_Option(where, in_dev + extra + kv, kv_chunk=chunk, host_bytes=kv_host))
        return options
    if kind == "mid":           # a mid block of unknown structure: run whole on the device
        fetched = 0 if held.stored and in_dev else map_bytes(held.shape, held.dtype)
        return [_Option("device", in_dev + fetched + 6 * out_b)]
    look_ahead = True
    if kind == "up" and following is not None and following.kind == "resnet":
        # Held only if the next resnet can still keep its output beside it.
        next_b = map_bytes((step.shape[0], following.module.conv2.out_channels) + step.shape[2:], step.dtype)
        look_ahead = out_b + 2 * next_b <= budget
    options.append(_Option("device", in_dev + out_b, fits_too=look_ahead))
    if kind == "up" or (kind == "conv" and module.in_channels * CHEAP_CONV_RATIO <= module.out_channels):
        options.append(_Option("on the fly", in_dev))
    if in_place:
        options.append(_Option("in place", in_dev))
    if host_allowed:
        options.append(_Option("host", in_dev))
    return options


def _choose(options, budget, lean, leaves_room):
    """The first option that fits and leaves the next stage room to run; with `lean`, the one that fits
    in the least device memory."""
    fitting = [o for o in options if o.fits_too and o.device_bytes <= budget and leaves_room(o)]
    if not fitting:
        return None
    return min(fitting, key=lambda o: o.device_bytes) if lean else fitting[0]


def _next_need(option, step, held, out_b, following, host_allowed, budget, work_bytes, stream_kv):
    """The least device memory the next stage can run in after `option` (a resnet that keeps its output on
    the device can leave an attention no room for its keys and values)."""
    if following is None:
        return 0
    after, _ = _after(StagePlan(step.kind, step.module, step.shape, option.where, dtype=step.dtype), held, out_b)
    probe = StagePlan(following.kind, following.module, dtype=_dtype_of(following.module, after.dtype))
    probe.shape = _out_shape(probe, after.shape)
    options = _options(probe, after, map_bytes(probe.shape, probe.dtype), None, host_allowed, budget, work_bytes,
                       stream_kv)
    return min(o.device_bytes for o in options)


def kv_chunk_positions(shape, dtype, work_bytes):
    """Positions per chunk of keys and values read back from host memory: KV_CHUNK_SHARE of a band's
    work, at least one row of the map."""
    n, c, h, w = shape
    per_position = 2 * n * c * torch.empty((), dtype=dtype).element_size()
    return min(h * w, max(w, int(KV_CHUNK_SHARE * work_bytes) // per_position))


def kv_chunk_bytes(shape, dtype, positions):
    n, c, _h, _w = shape
    return 2 * n * c * positions * torch.empty((), dtype=dtype).element_size()


def _after(step, held, out_b):
    """(the map after the stage, host bytes the stage adds while it runs)."""
    if step.where == "device":
        return _Held(step.shape, step.dtype, out_b), 0
    if step.where == "host":
        return _Held(step.shape, step.dtype, 0, out_b), out_b
    if step.where == "in place":
        return _Held(step.shape, step.dtype, held.device_bytes, held.host_bytes), 0
    return _Held(step.shape, step.dtype, held.device_bytes, held.host_bytes, stored=False), 0   # on the fly


def _size(num, decimals=1):
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num >= scale:
            return f"{num / scale:.{decimals}f} {unit}"
    return f"{num:.0f} bytes"


def _sizes(need, have):
    """Both figures of a shortfall, with the decimals that show the first is larger."""
    for decimals in range(1, 6):
        shown = _size(need, decimals), _size(have, decimals)
        if shown[0] != shown[1]:
            break
    return shown


# ----- untiled calls -----

# Peak memory of an untiled call, in full-resolution maps (full-resolution channels x 64 x itemsize x
# batch per latent pixel), by the layers in effect. Measured on the SD VAE in bf16 on the H100
# (docs/benchmarks.md), where the peak is linear in pixels: decode 9.5 maps as diffusers runs it, 8.0
# with fused upsampling, 6.0 with fused upsampling and fast GroupNorm ("fast", the default), 6.0 with
# low-memory convolutions; encode 6.0, or 5.0 with low-memory convolutions. Rounded up ~6%; fp32 needs
# fewer maps (6.0 and 5.0), so it is overestimated, never under.
PEAK_MAPS = {("decode", "plain"): 10.0, ("decode", "fused"): 8.5, ("decode", "fast"): 6.5,
             ("decode", "low_memory"): 6.5, ("encode", "plain"): 6.5, ("encode", "fused"): 6.5,
             ("encode", "fast"): 6.5, ("encode", "low_memory"): 5.5}
# Of free memory, for an untiled call's estimated peak. The margin is for the allocator's fragmentation:
# with 8 GB free, a 2048² decode that peaks at 6.0 GiB ran out of memory on an H100 (docs/benchmarks.md).
UNTILED_SHARE = 0.75


def latent_hw(kind, x):
    h, w = x.shape[-2:]
    return (h, w) if kind == "decode" else (h // SCALE, w // SCALE)


def untiled_bytes(module, kind, x, layers="plain"):
    """Estimated peak of an untiled call with `layers`: "plain", "fused" (fused upsampling), "fast" (and
    fast GroupNorm) or "low_memory" (banded convolutions too)."""
    h, w = latent_hw(kind, x)
    per_latent_px = PEAK_MAPS[(kind, layers)] * _full_resolution_channels(module, kind) * SCALE * SCALE
    return per_latent_px * x.element_size() * x.shape[0] * h * w


def fits_untiled(module, kind, x, layers="plain", share=UNTILED_SHARE):
    """Whether the untiled call's estimated peak is under `share` of free memory (on the CPU, of available
    RAM: there an allocation too large can end the process instead of raising)."""
    return untiled_bytes(module, kind, x, layers) < share * memory.free_bytes(x.device)


def _full_resolution_channels(module, kind):
    """Channels at image resolution (128 in the SD VAE), the same attribute names in both layouts."""
    if kind == "decode":
        conv = getattr(getattr(module, "decoder", None), "conv_out", None)
        return conv.in_channels if conv is not None else FULL_RES_CHANNELS
    conv = getattr(getattr(module, "encoder", None), "conv_in", None)
    return conv.out_channels if conv is not None else FULL_RES_CHANNELS
