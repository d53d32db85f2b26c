"""Seamless tiled decode and encode for SD-family VAEs (4 or 16 latent channels), any size, any batch.

Why the output has no seams:
- the mid block (where attention sees the whole image) always runs on the whole latent, which is small;
- every tile carries a halo of context that is cut off after the run, wide enough for the receptive
  field of the convolutions between the mid block and the pixels;
- GroupNorm statistics are shared across tiles (groupnorm_sync): one pass collects them, one applies them.

The VAE is driven through its own decode/encode (`original`), so diffusers, ldm/sgm and the Forge
backends' modules all work; only the mid block is located by name.
"""
import logging
import math

import torch

from . import memory, outputs
from .groupnorm_sync import SharedStats, TileGeometry, synced_group_norms

log = logging.getLogger("vae_precision")

SCALE = 8                 # pixels per latent pixel in every SD-family VAE
DECODE_HALO = 16          # latent pixels around each decode tile: the up path's receptive field is ~12.3
ENCODE_HALO = 12          # latent pixels (= 96 image pixels) around each encode tile
# Peak activation memory per latent pixel, in multiples of (widest late-stage channels x 64 x itemsize):
# measured on the SD VAE (docs/benchmarks.md), with headroom.
PEAK_MAPS = {"decode": 5.0, "encode": 6.0}
MIN_TILE = 16             # latent pixels


class _Stop(Exception):
    """Raised from inside a VAE forward once the part we need has been computed."""


def _mid_block(module, part):
    coder = getattr(module, part, None)
    for name in ("mid_block", "mid"):
        block = getattr(coder, name, None) if coder is not None else None
        if block is not None:
            return block
    return None


class _Replace:
    """Temporarily replaces a module's forward."""

    def __init__(self, target, forward):
        self.target, self.forward = target, forward

    def __enter__(self):
        self.previous = self.target.__dict__.get("forward")
        self.target.forward = self.forward

    def __exit__(self, *exc):
        if self.previous is None:
            self.target.__dict__.pop("forward", None)
        else:
            self.target.forward = self.previous


def _widest_late_channels(module, part):
    coder = getattr(module, part, None)
    convs = [m for m in (coder or module).modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        return 512
    # In both coders the full-resolution stage and its neighbour hold the largest maps.
    return max(c.out_channels for c in (convs[-4:] if part == "decoder" else convs[:4]))


class TilePlanner:
    """Decides whether a call fits untiled, and how large a tile fits free memory."""

    def __init__(self, module, kind, x, tile_px=0):
        self.module, self.kind, self.x, self.tile_px = module, kind, x, tile_px
        part = "decoder" if kind == "decode" else "encoder"
        channels = _widest_late_channels(module, part)
        self.bytes_per_latent_px = PEAK_MAPS[kind] * channels * SCALE * SCALE * x.element_size() * x.shape[0]

    def latent_hw(self):
        h, w = self.x.shape[-2:]
        return (h, w) if self.kind == "decode" else (h // SCALE, w // SCALE)

    def untiled_bytes(self):
        h, w = self.latent_hw()
        return self.bytes_per_latent_px * h * w

    def fits_untiled(self):
        if self.x.device.type == "cpu":
            return True
        return self.untiled_bytes() < 0.9 * memory.free_bytes(self.x.device)

    def tile_latent(self):
        if self.tile_px:
            return max(MIN_TILE, self.tile_px // SCALE)
        halo = DECODE_HALO if self.kind == "decode" else ENCODE_HALO
        budget = 0.6 * memory.free_bytes(self.x.device)
        side = int(math.sqrt(max(budget, 0) / self.bytes_per_latent_px)) - 2 * halo
        side = max(MIN_TILE, side - side % 8)
        h, w = self.latent_hw()
        return min(side, max(h, w))


def _spans(length, tile, halo):
    """(core_start, core_end, run_start, run_end) along one axis; cores tile the axis without overlap."""
    count = max(1, math.ceil(length / tile))
    edges = [round(i * length / count) for i in range(count + 1)]
    return [(a, b, max(0, a - halo), min(length, b + halo)) for a, b in zip(edges, edges[1:])]


def _tiles(height, width, tile, halo):
    for ys in _spans(height, tile, halo):
        for xs in _spans(width, tile, halo):
            yield ys, xs


def _set_core(geometry, ys, xs):
    (c0, c1, r0, r1), (d0, d1, s0, s1) = ys, xs
    geometry.core = ((c0 - r0) / (r1 - r0), (c1 - r0) / (r1 - r0), (d0 - s0) / (s1 - s0), (d1 - s0) / (s1 - s0))


def run_tiled(kind, original, module, x, args, kwargs, tile_latent, stats, seamless=True):
    run = _decode_tiled if kind == "decode" else _encode_tiled
    result = run(original, module, x, args, kwargs, tile_latent, stats, seamless)
    stats.tile_px = tile_latent * SCALE
    return result


def _two_passes(module, part, each_tile, seamless):
    """Runs each_tile(geometry, ...) over all tiles: once collecting GroupNorm statistics (each tile
    normalised with its own meanwhile), once normalising every tile with the pooled statistics.
    A second collecting pass that applies the first pass's statistics does not converge: stale
    statistics compound over the ~25 norms of the up path (measured), so there is exactly one."""
    geometry = TileGeometry()
    if not seamless:
        return each_tile(geometry, lambda: None, keep=True)
    coder = getattr(module, part, module)
    stats = SharedStats()
    with synced_group_norms(coder, stats, None, geometry) as reset:
        each_tile(geometry, reset, keep=False)
    with synced_group_norms(coder, None, stats, geometry) as reset:
        return each_tile(geometry, reset, keep=True)


def _decode_tiled(original, module, z, args, kwargs, tile, stats, seamless):
    height, width = z.shape[-2:]
    mid = _mid_block(module, "decoder")
    captured = {}
    if mid is not None:
        # The whole latent through post_quant_conv, conv_in and the mid block, then stop.
        def capture(*a, **k):
            captured["mid"] = mid.__class__.forward(mid, *a, **k)
            raise _Stop
        with _Replace(mid, capture):
            try:
                original(z, *args, **kwargs)
            except _Stop:
                pass
    tiles = list(_tiles(height, width, tile, DECODE_HALO))
    stats.tiles += len(tiles)
    state = {"out": None, "template": None}

    def each_tile(geometry, reset_calls, keep):
        for ys, xs in tiles:
            (c0, c1, r0, r1), (d0, d1, s0, s1) = ys, xs
            _set_core(geometry, ys, xs)
            reset_calls()
            if mid is not None:
                piece = captured["mid"][..., r0:r1, s0:s1]
                with _Replace(mid, lambda *a, **k: piece):
                    result = original(z[..., r0:r1, s0:s1], *args, **kwargs)
            else:
                result = original(z[..., r0:r1, s0:s1], *args, **kwargs)
            if not keep:
                continue
            image = outputs.main_tensor(result)
            if state["out"] is None:
                state["template"] = result
                state["out"] = image.new_empty(image.shape[:-2] + (height * SCALE, width * SCALE))
            state["out"][..., c0 * SCALE:c1 * SCALE, d0 * SCALE:d1 * SCALE] = \
                image[..., (c0 - r0) * SCALE:(c1 - r0) * SCALE, (d0 - s0) * SCALE:(d1 - s0) * SCALE]
        return outputs.with_tensor(state["template"], state["out"]) if keep else None

    return _two_passes(module, "decoder", each_tile, seamless and len(tiles) > 1)


def _encode_tiled(original, module, x, args, kwargs, tile, stats, seamless):
    height, width = x.shape[-2] // SCALE, x.shape[-1] // SCALE
    pad_h, pad_w = height * SCALE - x.shape[-2], width * SCALE - x.shape[-1]
    if pad_h or pad_w:
        raise ValueError("tiled encode needs image sides that are multiples of 8")
    mid = _mid_block(module, "encoder")
    if mid is None:
        raise RuntimeError("tiled encode needs an encoder with a mid block")
    tiles = list(_tiles(height, width, tile, ENCODE_HALO))
    stats.tiles += len(tiles)
    state = {"mid_in": None}

    def each_tile(geometry, reset_calls, keep):
        for ys, xs in tiles:
            (c0, c1, r0, r1), (d0, d1, s0, s1) = ys, xs
            _set_core(geometry, ys, xs)
            reset_calls()

            def capture(h, *a, **k):
                if keep:
                    if state["mid_in"] is None:
                        state["mid_in"] = h.new_empty(h.shape[:-2] + (height, width))
                    state["mid_in"][..., c0:c1, d0:d1] = h[..., c0 - r0:c1 - r0, d0 - s0:d1 - s0]
                raise _Stop
            with _Replace(mid, capture):
                try:
                    original(x[..., r0 * SCALE:r1 * SCALE, s0 * SCALE:s1 * SCALE], *args, **kwargs)
                except _Stop:
                    pass

    _two_passes(module, "encoder", each_tile, seamless and len(tiles) > 1)
    # The mid block and everything after it on the whole latent; a tiny stand-in image feeds the
    # down path, whose result the mid block ignores.
    full = state["mid_in"]
    stand_in = x[..., :4 * SCALE, :4 * SCALE]
    with _Replace(mid, lambda h, *a, **k: mid.__class__.forward(mid, full, *a, **k)):
        return original(stand_in, *args, **kwargs)
