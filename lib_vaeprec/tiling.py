"""Seamless tiled decode and encode for SD-family VAEs (4 or 16 latent channels), any size, any batch.

The coder (decoder or encoder) runs stage by stage (conv_in, each resnet block, each up/downsampler,
the output conv) over whole feature maps, and each stage is computed piece by piece: full-width bands
of rows, each holding as many elements as a square tile of the chosen tile size would. So:
- every GroupNorm normalises with the statistics of the whole map (groupnorm_stats), not the tile's;
- each band carries only the halo rows its own stage needs (1-2), not the receptive field of the
  whole network;
- the mid block (where attention sees the whole image) runs on the whole latent, which is small.
The result equals the untiled one up to float rounding. Memory is bounded by a few whole maps of one
stage instead of every intermediate of the network at once; when even those do not fit half the free
memory, the runner holds fewer (lean_maps) at the cost of recomputing.

The module is still driven through its own decode/encode (`original`): only the coder's forward is
replaced for the call, so post_quant_conv/quant_conv and whatever the host wraps around them run as usual.
"""
import contextlib
import logging
import math

import torch

from . import dtypes, fast_groupnorm, groupnorm_stats, lean_maps, memory
from .forward_override import Replaced
from .coder_layout import call_block, decoder_layout, encoder_layout, run_mid

log = logging.getLogger("vae_precision")

SCALE = 8                 # pixels per latent pixel in the SD-family VAEs
# Peak memory of an untiled call, in full-resolution maps (full-resolution channels x 64 x itemsize x
# batch per latent pixel), by the layers in effect. Measured on the SD VAE in bf16 on the H100
# (docs/benchmarks.md), where the peak is linear in pixels: decode 9.5 maps as diffusers runs it, 8.0
# with fused upsampling, 6.0 with fused upsampling and fast GroupNorm ("fast", the default), 6.0 with
# low-memory convolutions; encode 6.0, or 5.0 with low-memory convolutions. Rounded up ~6%; fp32 needs
# fewer maps (6.0 and 5.0), so it is overestimated, never under.
PEAK_MAPS = {("decode", "plain"): 10.0, ("decode", "fused"): 8.5, ("decode", "fast"): 6.5,
             ("decode", "low_memory"): 6.5, ("encode", "plain"): 6.5, ("encode", "fused"): 6.5,
             ("encode", "fast"): 6.5, ("encode", "low_memory"): 5.5}
MIN_TILE = 8              # latent pixels (64 image pixels, the smallest tile option)
MIN_BAND_ROWS = 16        # below this a band's 1-2 halo rows on each side cost too much recomputing
# Of free memory, for an untiled call's estimated peak. The margin is for the allocator's fragmentation:
# with 8 GB free, a 2048² decode that peaks at 6.0 GiB ran out of memory on an H100 (docs/benchmarks.md).
UNTILED_SHARE = 0.75
MAPS_SHARE = 0.5          # of free memory, for the whole maps a tiled call holds at once


class TilePlanner:
    """Decides whether a call fits untiled, and how large a tile fits free memory."""

    def __init__(self, module, kind, x, tile_px=0, layers="plain"):
        """`layers`: "plain", "fused" (fused upsampling), "fast" (and fast GroupNorm) or "low_memory"
        (banded convolutions too)."""
        self.module, self.kind, self.x, self.tile_px = module, kind, x, tile_px
        channels = _full_resolution_channels(module, kind)
        maps = PEAK_MAPS[(kind, layers)]
        self.bytes_per_latent_px = maps * channels * SCALE * SCALE * x.element_size() * x.shape[0]

    def latent_hw(self):
        h, w = self.x.shape[-2:]
        return (h, w) if self.kind == "decode" else (h // SCALE, w // SCALE)

    def untiled_bytes(self):
        h, w = self.latent_hw()
        return self.bytes_per_latent_px * h * w

    def fits_untiled(self, share=UNTILED_SHARE):
        """Whether the untiled call's estimated peak is under `share` of free memory."""
        if self.x.device.type == "cpu":
            return True
        return self.untiled_bytes() < share * memory.free_bytes(self.x.device)

    def tile_latent(self):
        """Tile side in latent pixels: from the option, or the largest whose stage work fits 1/4 of free memory."""
        if self.tile_px:
            return max(MIN_TILE, self.tile_px // SCALE)
        budget = 0.25 * memory.free_bytes(self.x.device)
        side = int(math.sqrt(max(budget, 0) / self.bytes_per_latent_px))
        h, w = self.latent_hw()
        return min(max(MIN_TILE, side - side % 8), max(h, w))


def _full_resolution_channels(module, kind):
    """Channels at image resolution (128 in the SD VAE), the same attribute names in both layouts."""
    if kind == "decode":
        conv = getattr(getattr(module, "decoder", None), "conv_out", None)
        return conv.in_channels if conv is not None else 128
    conv = getattr(getattr(module, "encoder", None), "conv_in", None)
    return conv.out_channels if conv is not None else 128


# ----- tiles along the maps -----

def _spans(length, tile, halo, align=1):
    """(core_start, core_end, run_start, run_end) along one axis; cores cover it without overlap."""
    count = max(1, math.ceil(length / tile))
    edges = [min(length, round(i * length / count / align) * align) for i in range(count + 1)]
    edges[-1] = length
    return [(a, b, max(0, a - halo), min(length, b + halo)) for a, b in zip(edges, edges[1:]) if b > a]


class _Stop(Exception):
    """Raised inside a block once the part we need has been computed."""


class StageRunner:
    """Runs the stages of one coder over whole maps, tile by tile (each tile a full-width band of rows,
    see _map_tiles; the code below works for any rectangles).

    `budget` bounds the whole maps held at once: when a resnet's input, conv1 output and output do
    not fit, conv1's output is recomputed tile by tile instead of kept; when an upsampler's output
    (the largest map of the decoder) would not fit with the next resnet's maps, it is never held
    (OnTheFly). Both cost compute, so they are used only when the budget asks.
    """

    def __init__(self, tile_elems, budget=float("inf")):
        self.tile_elems = tile_elems     # elements of one tile's activation (channels x pixels)
        self.budget = budget
        self.most_tiles = 0              # tiles of the most finely tiled stage (the full-resolution one)
        self.lean = []                   # what the budget made us recompute ("conv1", "upsampled")

    def band_rows(self, channels, width):
        """Rows of one band: a band holds as many elements as one square tile would."""
        return max(MIN_BAND_ROWS, self.tile_elems // max(1, channels * width))

    def _map_tiles(self, x, out_channels, halo, align=1):
        """Full-width bands of rows: no halo at the sides, fewer pieces (each costs launches on the
        CPU), and a band is the unit HostRows fetches and overwrite_lagged trails by."""
        height, width = x.shape[-2:]
        rows = self.band_rows(max(x.shape[1], out_channels), width)
        tiles = [(ys, (0, width, 0, width)) for ys in _spans(height, rows, halo, align)]
        self.most_tiles = max(self.most_tiles, len(tiles))
        return tiles

    def per_tile(self, fn, x, out_channels, halo, scale=1.0, align=1):
        """Y = fn(X) computed tile by tile; fn maps a tile to a tile `scale` times its size."""
        tiles = self._map_tiles(x, out_channels, halo, align)
        return _assemble(tiles, lambda r0, r1, s0, s1: fn(lean_maps.region(x, r0, r1, s0, s1)), x.shape[-2:], scale)

    def stats_of(self, x, groups):
        if not isinstance(x, lean_maps.OnTheFly):
            return groupnorm_stats.of_map(x, groups)
        stats = groupnorm_stats.GroupStats(groups)
        for (c0, c1, _r0, _r1), (d0, d1, _s0, _s1) in self._map_tiles(x, x.shape[1], halo=0):
            stats.add(x.region(c0, c1, d0, d1))
        return stats

    def resnet(self, block, x):
        """A resnet block: norm1 from x's statistics; conv1's output kept whole for norm2's statistics
        when the budget allows (else recomputed); then conv2 + shortcut, tile by tile."""
        stats1 = self.stats_of(x, block.norm1.num_groups)
        norm1 = Replaced(block.norm1, lambda t: groupnorm_stats.normalise(block.norm1, t, stats1))
        out_channels = block.conv1.out_channels

        def up_to_norm2(tile):
            def capture(h):
                raise _Stop(h)
            with norm1, Replaced(block.norm2, capture):
                try:
                    call_block(block, tile)
                except _Stop as stop:
                    return stop.args[0]
            raise RuntimeError("resnet block never reached norm2")

        map_bytes = lean_maps.map_bytes(x, out_channels, *x.shape[-2:])
        keep_h = lean_maps.bytes_of(x) + 2 * map_bytes <= self.budget
        if keep_h:
            h = self.per_tile(up_to_norm2, x, out_channels, halo=1)
            stats2 = groupnorm_stats.of_map(h, block.norm2.num_groups)
        else:
            self.lean.append("conv1")
            stats2 = groupnorm_stats.GroupStats(block.norm2.num_groups)
            for (c0, c1, r0, r1), (d0, d1, s0, s1) in self._map_tiles(x, out_channels, halo=1):
                stats2.add(up_to_norm2(lean_maps.region(x, r0, r1, s0, s1))[..., c0 - r0:c1 - r0, d0 - s0:d1 - s0])
            h = None
        norm2 = Replaced(block.norm2, lambda t: groupnorm_stats.normalise(block.norm2, t, stats2))

        def whole_block(tile, region):
            with norm1, norm2:
                if h is None:
                    return call_block(block, tile)
                with Replaced(block.conv1, lambda _t: h[..., region[0]:region[1], region[2]:region[3]]):
                    return call_block(block, tile)

        halo = 1 if h is not None else 2
        tiles = self._map_tiles(x, out_channels, halo)
        compute = lambda r0, r1, s0, s1: whole_block(lean_maps.region(x, r0, r1, s0, s1), (r0, r1, s0, s1))  # noqa: E731
        in_place = (h is None and not isinstance(x, lean_maps.OnTheFly) and out_channels == x.shape[1]
                    and lean_maps.bytes_of(x) + map_bytes > self.budget)
        if in_place:
            self.lean.append("in place")
            return lean_maps.overwrite_lagged(x, tiles, compute)
        return _assemble(tiles, compute, x.shape[-2:])

    def upsampled(self, upsampler, x, next_resnet):
        """The upsampler's output, held whole, or OnTheFly when it would not fit beside the next
        resnet's conv1 output and output. When even its input beside the next output does not fit,
        that input waits in host memory and each region is fetched from there."""
        n, _c, h, w = x.shape
        up_bytes = lean_maps.map_bytes(x, _out_channels(upsampler), 2 * h, 2 * w)
        next_map = lean_maps.map_bytes(x, next_resnet.conv1.out_channels, 2 * h, 2 * w) if next_resnet else 0
        if next_resnet is None or up_bytes + 2 * next_map <= self.budget:
            return self.stage("up", upsampler, x)
        self.lean.append("upsampled")
        source = x
        if lean_maps.bytes_of(x) + next_map > self.budget:
            self.lean.append("host memory")
            source = lean_maps.HostRows(x)
        return lean_maps.OnTheFly(upsampler, source, _out_channels(upsampler))

    def stage(self, kind, module, x):
        if kind == "resnet":
            return self.resnet(module, x)
        out_channels = _out_channels(module)
        if kind == "up":
            return self.per_tile(module, x, out_channels, halo=1, scale=2)
        if kind == "down":
            # pad (0,1,0,1) + stride-2 conv: even-aligned tiles with a 2-pixel halo give exact cores.
            return self.per_tile(module, x, out_channels, halo=2, scale=0.5, align=2)
        return self.per_tile(module, x, out_channels, halo=1)           # a 3x3 conv

    def output(self, layout, x):
        """norm_out -> SiLU -> conv_out (-> tanh), with norm_out's statistics from the whole map."""
        stats = groupnorm_stats.of_map(x, layout.norm_out.num_groups)

        def fn(tile):
            with Replaced(layout.norm_out, lambda t: groupnorm_stats.normalise(layout.norm_out, t, stats)):
                h = layout.norm_out(tile)
            h = layout.conv_out(torch.nn.functional.silu(h))
            return torch.tanh(h) if layout.tanh_out else h
        return self.per_tile(fn, x, layout.conv_out.out_channels, halo=1)


def _assemble(tiles, compute, size, scale=1.0):
    """The whole map from `compute(r0, r1, s0, s1)` of each tile's run region, `scale` times the input's
    `size`: each result's core (the tile without its halo) is written into place."""
    out = None
    for (c0, c1, r0, r1), (d0, d1, s0, s1) in tiles:
        y = compute(r0, r1, s0, s1)
        if out is None:
            out = _empty_like_layout(y, y.shape[:2] + (int(size[0] * scale), int(size[1] * scale)))
        f = scale
        out[..., int(c0 * f):int(c1 * f), int(d0 * f):int(d1 * f)] = \
            y[..., int((c0 - r0) * f):int((c1 - r0) * f), int((d0 - s0) * f):int((d1 - s0) * f)]
    return out


def _empty_like_layout(tile, shape):
    """A whole map for the tiles' results, in their memory layout (channels_last stays channels_last)."""
    layout = torch.channels_last if lean_maps.is_channels_last(tile) else torch.contiguous_format
    return torch.empty(shape, dtype=tile.dtype, device=tile.device, memory_format=layout)


def _wraps_around(coder):
    return any(isinstance(m, torch.nn.Conv2d) and m.padding_mode != "zeros" for m in coder.modules())


def _out_channels(module):
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1].out_channels if convs else 0


def _tile_elems(tile_latent):
    # A tile of `tile_latent` latent pixels, seen at image resolution with the SD VAE's 128 channels there.
    return (tile_latent * SCALE) ** 2 * 128


def decode_stagewise(layout, z, runner):
    h = runner.stage("conv", layout.head[0][1], z)
    h = run_mid(layout.mid, h)
    h = h.to(dtypes.of_module(layout.body[0][1], h.dtype) if layout.body else h.dtype)
    h = fast_groupnorm.to_channels_last(h)      # where the untiled decoder runs so (16-bit maps on CUDA)
    body = layout.body
    for i, (kind, module) in enumerate(body):
        if kind == "up":
            following = body[i + 1] if i + 1 < len(body) else None
            h = runner.upsampled(module, h, following[1] if following and following[0] == "resnet" else None)
        else:
            h = runner.stage(kind, module, h)
    return runner.output(layout, h)


def encode_stagewise(layout, x, runner):
    h = x
    for kind, module in layout.head:
        h = runner.stage(kind, module, h)
    h = run_mid(layout.mid, h)
    return runner.output(layout, h)


def run_tiled(kind, original, module, x, args, kwargs, tile_latent, stats, maps_share=MAPS_SHARE):
    """`original(x, *args, **kwargs)` with the coder's forward replaced by its stage-wise tiled run.
    `maps_share`: of free memory, for the whole maps held at once (0: as few as the runner can)."""
    part = "decoder" if kind == "decode" else "encoder"
    coder = getattr(module, part, None)
    layout = None if coder is None else (decoder_layout if kind == "decode" else encoder_layout)(coder)
    if layout is None:
        log.warning("VAE Precision: unknown %s layout (%s); running untiled", part, type(coder).__name__)
        return original(x, *args, **kwargs)
    if _wraps_around(coder):
        # A1111's seamless "Tiling" option pads convs circularly: tiles cannot reproduce that wrap.
        log.warning("VAE Precision: the %s's convs pad circularly (seamless texture); running untiled", part)
        return original(x, *args, **kwargs)
    runner = StageRunner(_tile_elems(tile_latent), budget=maps_share * memory.free_bytes(x.device))
    run = decode_stagewise if kind == "decode" else encode_stagewise
    with Replaced(coder, lambda h, *a, **k: run(layout, h, runner)):
        result = original(x, *args, **kwargs)
    stats.tiles += runner.most_tiles
    stats.tile_px = tile_latent * SCALE
    if runner.lean:
        log.info("VAE Precision: tiled %s fitted to memory with: %s", kind, ", ".join(sorted(set(runner.lean))))
    return result
