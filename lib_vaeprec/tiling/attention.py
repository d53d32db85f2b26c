"""The mid block's self-attention over a map held in bands: exact, in device memory that does not grow
with the image.

Every position attends to every other, so K and V of the whole map are made first (one pass), then each
band's queries are answered against them and the band's output written. K and V stay whole on the device
where the plan has room for them (2 GiB for an 8192² image); else they wait in pinned host memory and
each band's queries read them in chunks of positions, with an online softmax: each chunk's scores are
exponentiated against the largest score seen so far, and the running sums and outputs are rescaled
when a larger one comes (fp32 throughout), which gives the same softmax as one pass over every key. The VAE's
attention is single-head with 512 channels, beyond the flash kernels (head size <= 256): torch falls back
to its memory-efficient kernel, which took 2.2 s for the 512² latent of a 4096² image on an H100. Answered
in chunks of queries it took 1.4 s with the same result bit for bit, and with the scores as one fp32
matrix product per chunk (16-bit inputs, fp32 accumulation and output) 0.98 s (max difference 1.2e-4 on
values of order 1). That product needs `torch.mm(..., out_dtype=torch.float32)` (CUDA, torch >= 2.8);
elsewhere the chunked kernel runs.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import groupnorm_stats
from .maps import PinnedRows

_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor", "XFormersAttnProcessor", "AttnProcessorNPU")
SCORE_BYTES = 10         # per query-key pair in a chunk: fp32 scores, their fp32 softmax, 16-bit probabilities
SDPA_CHUNK = 16384       # queries per chunk at most (measured faster than one call for the 512² latent)


@dataclass
class Parts:
    """One attention block as the runner computes it: `project(name, normed band)` gives (B, L, C)."""
    module: torch.nn.Module
    norm: torch.nn.GroupNorm
    heads: int
    channels_first: bool       # ldm/sgm/Forge AttnBlock: 1x1 convs on (B, C, H, W); diffusers: Linear on (B, L, C)
    residual: bool = True
    rescale: float = 1.0

    def project(self, name, normed):
        """The "q", "k" or "v" projection of a normalised band, as (B, positions, C)."""
        if self.channels_first:
            return getattr(self.module, name)(normed).flatten(2).transpose(1, 2)
        return getattr(self.module, "to_" + name)(normed.flatten(2).transpose(1, 2))

    def out(self, attended, like):
        """The output projection, back in the band's shape (B, C, rows, W)."""
        b, c, h, w = like.shape
        if self.channels_first:
            return self.module.proj_out(attended.transpose(1, 2).reshape(b, c, h, w))
        y = self.module.to_out[1](self.module.to_out[0](attended))
        return y.transpose(1, 2).reshape(b, c, h, w)


def parts_of(module):
    """Parts of a known attention block, or None (the runner then runs it whole)."""
    if all(hasattr(module, n) for n in ("norm", "q", "k", "v", "proj_out")) and \
            isinstance(module.norm, torch.nn.GroupNorm):
        return Parts(module, module.norm, heads=1, channels_first=True)
    if all(hasattr(module, n) for n in ("to_q", "to_k", "to_v", "to_out", "group_norm", "heads")):
        plain = (isinstance(module.group_norm, torch.nn.GroupNorm) and getattr(module, "spatial_norm", None) is None
                 and getattr(module, "norm_q", None) is None and getattr(module, "norm_k", None) is None
                 and type(getattr(module, "processor", None)).__name__ in _PROCESSORS)
        if plain:
            return Parts(module, module.group_norm, heads=module.heads, channels_first=False,
                         residual=module.residual_connection, rescale=module.rescale_output_factor)
    return None


def _heads(t, heads):
    b, length, c = t.shape
    return t.view(b, length, heads, c // heads).transpose(1, 2)


class DeviceKeysValues:
    """K and V of the whole map on the device, (B, heads, positions, head size) each: one chunk."""

    whole = True

    def __init__(self, heads):
        self.heads, self.keys, self.values = heads, None, None

    def write(self, start, k, v, positions):
        """The (B, n, C) keys and values of positions [start, start + n)."""
        k, v = _heads(k, self.heads), _heads(v, self.heads)
        if self.keys is None:
            self.keys = k.new_empty(k.shape[:2] + (positions, k.shape[3]))
            self.values = v.new_empty(self.keys.shape)
        self.keys[:, :, start:start + k.shape[2]] = k
        self.values[:, :, start:start + v.shape[2]] = v

    def chunks(self):
        yield self.keys, self.values


class HostKeysValues:
    """K and V of the whole map in (pinned) host memory, positions outermost as (positions, B, 2, C), read
    back in chunks of `chunk` positions (the next one copied while the device works on the current one)."""

    whole = False

    def __init__(self, heads, chunk, device):
        self.heads, self.chunk, self.device = heads, chunk, device
        self.rows, self.positions = None, 0

    def write(self, start, k, v, positions):
        pair = torch.stack((k, v), dim=2).transpose(0, 1).contiguous()      # (n, B, 2, C)
        if self.rows is None:
            self.rows = PinnedRows((positions,) + tuple(pair.shape[1:]), pair.dtype, self.device)
            self.positions = positions
        self.rows.write_rows(start, start + pair.shape[0], pair)

    def chunks(self):
        regions = [(i, min(self.positions, i + self.chunk)) for i in range(0, self.positions, self.chunk)]
        for pair in self.rows.read_blocks(regions):
            pair = pair.transpose(0, 1)                                      # (B, n, 2, C), a view
            yield _heads(pair[:, :, 0], self.heads), _heads(pair[:, :, 1], self.heads)


def keys_and_values(parts, bands, stats, shape, store):
    """K and V of the whole map into `store` (DeviceKeysValues or HostKeysValues), from its bands in order."""
    start, positions = 0, shape[2] * shape[3]
    for band in bands:
        normed = groupnorm_stats.normalise(parts.norm, band, stats)
        k, v = parts.project("k", normed), parts.project("v", normed)
        store.write(start, k, v, positions)
        start += k.shape[1]
    return store


def answer(parts, band, stats, keys_values, work_bytes):
    """The block's output for one band of its input."""
    normed = groupnorm_stats.normalise(parts.norm, band, stats)
    q = _heads(parts.project("q", normed), parts.heads)
    if keys_values.whole:
        keys, values = next(keys_values.chunks())
        attended = attend(q, keys, values, work_bytes)
    else:
        attended = attend_streamed(q, keys_values.chunks(), work_bytes)
    b, heads, length, size = attended.shape
    y = parts.out(attended.transpose(1, 2).reshape(b, length, heads * size), band)
    if parts.residual:
        y = y + band
    return y / parts.rescale if parts.rescale != 1.0 else y


def fp32_scores_available(q):
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _mm_out_dtype()


_MM_OUT_DTYPE = []


def _mm_out_dtype():
    if not _MM_OUT_DTYPE:
        try:
            a = torch.zeros(2, 2, dtype=torch.bfloat16, device="cuda")
            torch.mm(a, a, out_dtype=torch.float32)
            _MM_OUT_DTYPE.append(True)
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE.append(False)
    return _MM_OUT_DTYPE[0]


def attend(q, k, v, work_bytes, fp32_scores=None):
    """softmax(q kᵀ / sqrt(d)) v for (B, heads, L, d) queries, answered in chunks of queries that fit
    `work_bytes`. `fp32_scores`: force the explicit product (None: where it is available)."""
    if fp32_scores is None:
        fp32_scores = fp32_scores_available(q)
    if not fp32_scores:
        # The fused kernel keeps no score matrix; fewer queries per call would leave the GPU idle (it works
        # on blocks of queries, and there is one head).
        return torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + SDPA_CHUNK], k, v)
                          for i in range(0, q.shape[2], SDPA_CHUNK)], dim=2)
    chunk = max(64, min(SDPA_CHUNK, work_bytes // (SCORE_BYTES * k.shape[2])))
    # The scale applied to the queries once, not to every score (a pass over the largest tensor here):
    # measured 0.92 s against 1.35 s for the 512² latent, with the same largest difference to the kernel.
    q = q * q.shape[3] ** -0.5
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            kt, values = k[b, h].transpose(0, 1), v[b, h]
            for i in range(0, q.shape[2], chunk):
                out[b, h, i:i + chunk] = _chunk(q[b, h, i:i + chunk], kt, values)
    return out


def fp32_product(a, b):
    """a @ b with fp32 accumulation and result: one 16-bit product on CUDA, else in fp32."""
    if a.is_cuda and a.dtype != torch.float32:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def _chunk(q, kt, v):
    weights = torch.softmax(fp32_product(q, kt), dim=1).to(v.dtype)   # in the values' format, as fused kernels do
    return torch.mm(weights, v)


def attend_streamed(q, chunks, work_bytes):
    """attend() with keys and values coming in chunks of positions, each (k, v) (B, heads, n, d) read once:
    an online softmax over the chunks, with the scores, their running largest and sums and the output
    accumulated in fp32 (each chunk's probabilities in the values' format, as attend() has them)."""
    b, heads, length, size = q.shape
    q = q * size ** -0.5
    acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    top = torch.full((b, heads, length), -math.inf, dtype=torch.float32, device=q.device)
    total = torch.zeros((b, heads, length), dtype=torch.float32, device=q.device)
    for k, v in chunks:
        rows = max(64, min(SDPA_CHUNK, work_bytes // (SCORE_BYTES * k.shape[2])))
        for i in range(b):
            for h in range(heads):
                kt, values = k[i, h].transpose(0, 1), v[i, h]
                for r in range(0, length, rows):
                    _online_step(q[i, h, r:r + rows], kt, values, acc[i, h, r:r + rows], top[i, h, r:r + rows],
                                 total[i, h, r:r + rows])
    return (acc / total[..., None]).to(q.dtype)


def _online_step(q, kt, v, acc, top, total):
    """One chunk of keys for a chunk of queries: `acc`, `top` and `total` (the running output, largest
    score and sum of exponentials) updated in place."""
    scores = fp32_product(q, kt)
    new_top = torch.maximum(top, scores.amax(dim=1))
    scores.sub_(new_top[:, None]).exp_()
    kept = (top - new_top).exp_()          # what the earlier chunks' sums are worth against the new largest
    total.mul_(kept).add_(scores.sum(dim=1))
    acc.mul_(kept[:, None]).add_(fp32_product(scores.to(v.dtype), v))
    top.copy_(new_top)
