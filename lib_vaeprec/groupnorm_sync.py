"""GroupNorm with statistics shared across tiles: the reason tiled VAE output shows seams is that each
tile normalises with its own mean and variance. Here a first pass over the tiles collects every
GroupNorm's statistics over each tile's core region (halo excluded, so each pixel counts once) and a
second pass normalises every tile with the statistics of the whole image.
"""
import contextlib

import torch
import torch.nn.functional as F


class TileGeometry:
    """Where the core (the part kept in the output) sits inside the tile now being run, as fractions."""

    def __init__(self):
        self.core = None   # (top, bottom, left, right) as fractions of the tile's height/width

    def region(self, height, width):
        top, bottom, left, right = self.core
        return (round(top * height), round(bottom * height), round(left * width), round(right * width))


class SharedStats:
    """Running per-(sample, group) mean and M2 of each GroupNorm call, combined across tiles (Chan et al.)."""

    def __init__(self):
        self.count, self.mean, self.m2 = {}, {}, {}

    def add(self, key, values):   # values: (batch, groups, n) float32
        n = values.shape[-1]
        if n == 0:
            return
        var, mean = torch.var_mean(values, dim=-1, correction=0)
        mean, m2 = mean.double(), var.double() * n
        if key not in self.count:
            self.count[key], self.mean[key], self.m2[key] = n, mean, m2
            return
        total = self.count[key] + n
        delta = mean - self.mean[key]
        self.mean[key] = self.mean[key] + delta * (n / total)
        self.m2[key] = self.m2[key] + m2 + delta ** 2 * (self.count[key] * n / total)
        self.count[key] = total

    def get(self, key):
        return self.mean[key], self.m2[key] / self.count[key]


def _grouped(x, groups):
    return x.reshape(x.shape[0], groups, -1)


@contextlib.contextmanager
def synced_group_norms(module, collect_into, apply_from, geometry: TileGeometry):
    """Inside: every GroupNorm of `module` adds its input's core statistics to `collect_into` (if given)
    and normalises with the shared statistics of `apply_from` (if given; else with the tile's own)."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
    call_index = {"n": 0}

    def make_forward(norm, native_forward):
        def forward(x):
            key = call_index["n"]
            call_index["n"] += 1
            if collect_into is not None:
                top, bottom, left, right = geometry.region(x.shape[-2], x.shape[-1])
                core = x[..., top:bottom, left:right].float()
                collect_into.add(key, _grouped(core, norm.num_groups))
            if apply_from is None:
                return native_forward(x)
            mean, var = apply_from.get(key)
            xf = _grouped(x.float(), norm.num_groups)
            scale = torch.rsqrt(var.float() + norm.eps).unsqueeze(-1)
            y = ((xf - mean.float().unsqueeze(-1)) * scale).reshape(x.shape)
            if norm.affine:
                shape = (1, -1) + (1,) * (x.dim() - 2)
                y = y * norm.weight.float().reshape(shape) + norm.bias.float().reshape(shape)
            return y.to(x.dtype)
        return forward

    previous = {}
    for norm in norms:
        previous[norm] = norm.__dict__.get("forward")
        norm.forward = make_forward(norm, norm.forward)
    try:
        yield lambda: call_index.update(n=0)
    finally:
        for norm, prev in previous.items():
            if prev is None:
                norm.__dict__.pop("forward", None)
            else:
                norm.forward = prev


def native_group_norm(norm, x):
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
