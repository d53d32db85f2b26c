"""How a tiled run holds fewer whole maps when memory is short (see tiling.StageRunner).

- OnTheFly: an upsampler's output is never held; each region is computed from its input when read.
- HostRows: that input itself waits in pinned host memory, fetched in chunks of rows, one ahead.
- overwrite_lagged: a block's output is written over its input, one row of tiles behind.
Each trades compute or copies for memory; the runner uses them only when its budget asks.
"""
import torch

from . import speed


class OnTheFly:
    """An upsampler's output that is never held whole: each region is computed from the (4x smaller)
    input when it is read. Used when holding it would not fit the memory budget. The input is a
    device tensor, or HostRows when even it does not fit."""

    def __init__(self, upsampler, source, out_channels):
        self.upsampler, self.source = upsampler, source
        # Each region's input is copied out of the source anyway; in the source's layout it costs the
        # same and keeps a channels_last decoder body channels_last.
        self.memory_format = torch.channels_last if is_channels_last(source) else torch.contiguous_format
        n, _c, h, w = source.shape
        self.shape = (n, out_channels, 2 * h, 2 * w)
        self.dtype, self.device = source.dtype, source.device

    def region(self, r0, r1, s0, s1):
        # A 3x3 conv on the 2x map reads one upsampled pixel around each output, i.e. one source pixel.
        h, w = self.source.shape[-2:]
        a0, a1 = max(0, r0 // 2 - 1), min(h, (r1 + 1) // 2 + 1)
        b0, b1 = max(0, s0 // 2 - 1), min(w, (s1 + 1) // 2 + 1)
        crop = self.source.crop(a0, a1, b0, b1) if isinstance(self.source, HostRows) \
            else self.source[..., a0:a1, b0:b1]
        y = self.upsampler(crop.contiguous(memory_format=self.memory_format))
        return y[..., r0 - 2 * a0:r1 - 2 * a0, s0 - 2 * b0:s1 - 2 * b0]

    def held_bytes(self):
        return bytes_of(self.source)


class HostRows:
    """A device map kept in pinned host memory, rows outermost, so that a band of rows is one
    contiguous block: fast copies per band instead of a strided gather per tile.

    Rows come back in chunks of CHUNK_ROWS. Tiles go down the image, so while the device computes on
    one band, the chunk below it is already being copied on a side stream (CUDA), which hides most of
    the copying. Only the chunks of the current band and the next one stay on the device."""

    CHUNK_ROWS = 64          # rows per copy, which bounds what the device holds besides the band

    def __init__(self, x):
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.channels_last = is_channels_last(x)
        n, c, h, w = x.shape
        self.rows = torch.empty((h, n, c, w), dtype=x.dtype, pin_memory=x.is_cuda)
        for top in range(0, h, self.CHUNK_ROWS):
            self.rows[top:top + self.CHUNK_ROWS].copy_(x[:, :, top:top + self.CHUNK_ROWS].permute(2, 0, 1, 3))
        self._band = None        # (first row, end row, the band on the device as N, C, rows, W)
        self._chunks = {}        # chunk index -> [rows on the device (rows, N, C, W), copy-done event or None]
        self._copier = torch.cuda.Stream(x.device) if x.is_cuda else None

    def crop(self, a0, a1, b0, b1):
        if self._band is None or not (self._band[0] <= a0 and a1 <= self._band[1]):
            self._band = None                # let the old band go before the new one is made
            self._band = (a0, a1, self._fetch(a0, a1))
        first, _end, band = self._band
        return band[:, :, a0 - first:a1 - first, b0:b1]

    def _fetch(self, a0, a1):
        size = self.CHUNK_ROWS
        first, last = a0 // size, (a1 - 1) // size
        for k in [k for k in self._chunks if k < first or k > last + 1]:
            del self._chunks[k]
        parts = [self._chunk(k)[max(0, a0 - k * size):min(size, a1 - k * size)] for k in range(first, last + 1)]
        self._start(last + 1)
        rows = parts[0] if len(parts) == 1 else torch.cat(parts)
        return rows.permute(1, 2, 0, 3)

    def _chunk(self, k):
        self._start(k)
        entry = self._chunks[k]
        if entry[1] is not None:                       # copied on the side stream: wait for it here
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(entry[1])
            entry[0].record_stream(compute)            # freed only after the work that reads it
            entry[1] = None
        return entry[0]

    def _start(self, k):
        size = self.CHUNK_ROWS
        if k in self._chunks or k * size >= self.shape[2]:
            return
        source = self.rows[k * size:(k + 1) * size]
        if self._copier is None:
            self._chunks[k] = [source.to(self.device), None]
            return
        with torch.cuda.stream(self._copier):
            rows = source.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copier)
        self._chunks[k] = [rows, done]

    def held_bytes(self):
        held = sum(rows.numel() * rows.element_size() for rows, _ in self._chunks.values())
        band = self._band[2] if self._band else None
        return held + (0 if band is None else band.numel() * band.element_size())


def overwrite_lagged(x, tiles, compute):
    """x = compute(x) tile by tile, written into x itself. A tile's result is written only once no
    later tile reads those pixels as its halo: after the tile diagonally below-right of it is done.
    So the block needs x and about one row of results, not a second whole map."""
    rows = {}
    for tile in tiles:
        rows.setdefault(tile[0][:2], []).append(tile)
    pending = []                      # results of the previous row of tiles, by column
    for row in rows.values():
        current = []
        for j, ((c0, c1, r0, r1), (d0, d1, s0, s1)) in enumerate(row):
            y = compute(r0, r1, s0, s1)
            current.append(((c0, c1, d0, d1), y[..., c0 - r0:c1 - r0, d0 - s0:d1 - s0]))
            if j >= 1 and pending:
                _write(x, pending, j - 1)
        for k in range(len(pending)):
            _write(x, pending, k)
        pending = current
    for k in range(len(pending)):
        _write(x, pending, k)
    return x


def _write(x, results, k):
    if results[k] is not None:
        (c0, c1, d0, d1), y = results[k]
        x[..., c0:c1, d0:d1] = y
        results[k] = None


def is_channels_last(x):
    """Whether a map is stored channels_last (a HostRows remembers its device map's layout)."""
    return x.channels_last if isinstance(x, HostRows) else speed.is_channels_last(x)


def region(x, r0, r1, s0, s1):
    return x.region(r0, r1, s0, s1) if isinstance(x, OnTheFly) else x[..., r0:r1, s0:s1]


def bytes_of(x):
    """Device bytes a map holds: a tensor's own, or what an OnTheFly/HostRows keeps on the device."""
    held = getattr(x, "held_bytes", None)
    return held() if held is not None else x.numel() * x.element_size()


def map_bytes(like, channels, height, width):
    """Bytes of a map of `like`'s batch and dtype with the given channels and size."""
    itemsize = torch.empty((), dtype=like.dtype).element_size()
    return like.shape[0] * channels * height * width * itemsize
