"""Whole-image GroupNorm statistics, gathered piece by piece, and normalising with them.

Tiled VAEs show seams because each tile normalises with its own mean and variance; here every
GroupNorm uses the statistics of the whole map, combined from pieces in float64 (Chan et al.).
"""
import torch

ROWS_PER_PIECE = 64


class GroupStats:
    """Running per-(sample, group) mean and M2 of one GroupNorm input."""

    def __init__(self, groups):
        self.groups = groups
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x):
        values = x.float().reshape(x.shape[0], self.groups, -1)
        n = values.shape[-1]
        if n == 0:
            return
        var, mean = torch.var_mean(values, dim=-1, correction=0)
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def mean_var(self):
        return self.mean, self.m2 / self.count


def of_map(x, groups):
    """Statistics of a whole (B, C, H, W) map, read in row bands to bound the fp32 temporary."""
    stats = GroupStats(groups)
    for top in range(0, x.shape[-2], ROWS_PER_PIECE):
        stats.add(x[..., top:top + ROWS_PER_PIECE, :])
    return stats


def normalise(norm, x, stats):
    """What `norm(x)` returns, computed with the given statistics instead of x's own."""
    mean, var = stats.mean_var()
    grouped = x.float().reshape(x.shape[0], norm.num_groups, -1)
    y = (grouped - mean.float().unsqueeze(-1)) * torch.rsqrt(var.float() + norm.eps).unsqueeze(-1)
    y = y.reshape(x.shape)
    if norm.affine:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = y * norm.weight.float().reshape(shape) + norm.bias.float().reshape(shape)
    return y.to(x.dtype)
