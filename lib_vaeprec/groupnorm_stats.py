"""Whole-map GroupNorm statistics, gathered piece by piece, and normalising with them.

Tiled VAEs show seams because each tile normalises with its own mean and variance; here every
GroupNorm uses the statistics of the whole map, combined from pieces.

Both steps are also faster than torch's own CUDA GroupNorm on large maps, which gathers each
(sample, group) with one thread block: 32 blocks for a whole 2048² map, about half of an eager SD
decode's time at that size on an H100 (docs/benchmarks.md). Here the statistics are per-channel
reductions, which spread over the whole GPU, and normalising is one elementwise pass
(`fast_groupnorm` installs this as the VAE's GroupNorm for untiled calls).
"""
import torch


class GroupStats:
    """Running per-(sample, group) statistics of one GroupNorm input, added piece by piece.

    16-bit pieces add per-channel float32 sums of x and x² (two reductions that read the piece in
    place and little else: tiled runs add many pieces); float32 pieces add a numerically stable
    mean and M2 (var_mean), combined across pieces in float64 (Chan et al.)."""

    def __init__(self, groups):
        self.groups = groups
        self.count, self.mean, self.m2 = 0, None, None     # float64 (B, G)
        self._sums = None          # [pixels, Σx, Σx²] per (B, C) from 16-bit pieces, not yet folded in
        self._params = None        # (norm, per-channel mean, var, weight, bias) for batch_norm

    def add(self, x):
        """Adds a piece (B, C, ...) of the map: any region, strided views included, without copying it."""
        pixels = x[0, 0].numel() if x.shape[0] and x.shape[1] else 0
        if pixels == 0:
            return
        self._params = None
        dims = tuple(range(2, x.dim()))
        if x.dtype in (torch.float32, torch.float64):
            self._add_welford(x, dims, pixels)
            return
        total = x.sum(dim=dims, dtype=torch.float32)
        norm = torch.linalg.vector_norm(x, 2, dim=dims, dtype=torch.float32)
        if self._sums is None:
            self._sums = [pixels, total, norm * norm]
        else:
            self._sums[0] += pixels
            self._sums[1] += total
            self._sums[2].addcmul_(norm, norm)

    def _add_welford(self, x, dims, pixels):
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        batch, per_group = x.shape[0], x.shape[1] // self.groups
        channel_mean = mean.double().view(batch, self.groups, per_group)
        channel_m2 = var.double().view(batch, self.groups, per_group) * pixels
        # Channels of a group combined: total M2 = within-channel M2 + spread of the channel means.
        group_mean = channel_mean.mean(-1)
        group_m2 = (channel_m2 + pixels * (channel_mean - group_mean.unsqueeze(-1)) ** 2).sum(-1)
        self._combine(per_group * pixels, group_mean, group_m2)

    def _fold_sums(self):
        """The 16-bit sums as a group mean and M2. The cancellation in M2 = Σx² - n·mean² costs about
        1e-7 x (mean²/var) relative, far below the 16-bit rounding of the values themselves."""
        pixels, total, squares = self._sums
        self._sums = None
        batch = total.shape[0]
        n = pixels * (total.shape[1] // self.groups)
        total = total.double().view(batch, self.groups, -1).sum(-1)
        squares = squares.double().view(batch, self.groups, -1).sum(-1)
        mean = total / n
        self._combine(n, mean, (squares - total * mean).clamp_min(0))

    def _combine(self, n, mean, m2):
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def mean_var(self):
        if self._sums is not None:
            self._fold_sums()
        return self.mean, self.m2 / self.count

    def channel_params(self, norm, device):
        """(mean and var per (sample, channel), weight, bias) in float32 for batch_norm, made once:
        a tiled run normalises many tiles with the same statistics."""
        if self._params is None or self._params[0] is not norm:
            mean, var = self.mean_var()
            per_group = norm.num_channels // norm.num_groups
            weight = norm.weight.to(device, torch.float32) if norm.affine else None
            bias = norm.bias.to(device, torch.float32) if norm.affine else None
            self._params = (norm, mean.float().repeat_interleave(per_group, dim=1),
                            var.float().repeat_interleave(per_group, dim=1), weight, bias)
        return self._params[1:]


def of_map(x, groups):
    """Statistics of a whole (B, C, H, W) map (or a region view of one)."""
    stats = GroupStats(groups)
    stats.add(x)
    return stats


def normalise(norm, x, stats):
    """What `norm(x)` returns, computed with the given statistics instead of x's own.

    One elementwise pass: batch_norm in inference form is exactly (x - mean) / sqrt(var + eps) *
    weight + bias per channel, computed in float32 for 16-bit input; each sample gets its groups'
    statistics spread over their channels."""
    mean, var, weight, bias = stats.channel_params(norm, x.device)
    pieces = [torch.nn.functional.batch_norm(x[i:i + 1], mean[i], var[i], weight, bias, False, 0.0, norm.eps)
              for i in range(x.shape[0])]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def group_norm(norm, x):
    """`norm(x)` computed as above: the map's own statistics, then one normalising pass."""
    return normalise(norm, x, of_map(x, norm.num_groups))
