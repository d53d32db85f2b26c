"""The whole feature maps of a tiled run, and how a pass reads and writes them band by band.

A pass goes down a map in full-width bands of rows (`spans`). A map lives where the plan (plan.py) puts it:
- on the device: a plain tensor;
- in host memory (HostMap): pinned, rows outermost, so a band of rows is one contiguous block; the next
  band is fetched on a side stream while the device computes, and results go back on another, so copies
  in both directions run beside the compute (PinnedRows, also used for the attention's keys and values);
- nowhere (Lazy): a cheap stage's output (an upsampler's, the encoder's first conv) is recomputed from
  its source for every band that reads it.
Writers (DeviceSink, HostMap, or the input itself with `Lagged`) take each band's core as it is computed,
and add it to the statistics the next GroupNorm needs, so no pass is spent on statistics.
"""
import math
import threading

import torch

from .. import speed


def spans(length, rows, halo, align=1):
    """(core_start, core_end, run_start, run_end) of each band along one axis; cores cover it without
    overlap and each run region adds `halo` rows on both sides (clamped to the map)."""
    count = max(1, math.ceil(length / max(1, rows)))
    edges = [min(length, round(i * length / count / align) * align) for i in range(count + 1)]
    edges[-1] = length
    return [(a, b, max(0, a - halo), min(length, b + halo)) for a, b in zip(edges, edges[1:]) if b > a]


def is_channels_last(x):
    """Whether a map (a tensor, HostMap or Lazy) is stored channels_last."""
    return x.channels_last if isinstance(x, (HostMap, Lazy)) else speed.is_channels_last(x)


def memory_format_of(x):
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def read_bands(source, regions):
    """Device tensors (N, C, rows, W) for each (r0, r1) of `regions`, in order."""
    if isinstance(source, (HostMap, Lazy)):
        yield from source.read_bands(regions)
        return
    for r0, r1 in regions:
        yield source[..., r0:r1, :]


def map_bytes(shape, dtype):
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class _Streams:
    """One side stream per device for fetching rows and one for writing them back: H2D and D2H copies
    then run at once (measured on an H100: 51 GB/s one way, 41 GB/s each way together)."""
    _by_device = {}

    @classmethod
    def of(cls, device):
        if device.type != "cuda":
            return None
        key = device.index if device.index is not None else torch.cuda.current_device()
        if key not in cls._by_device:
            cls._by_device[key] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
        return cls._by_device[key]


class PinnedRows:
    """Rows in (pinned) host memory, the first dimension outermost, so a block of rows moves in one copy:
    the next block is fetched on a side stream while the device computes, and blocks written go back on
    another, so copies in both directions run beside the compute. The rows come from `HOST_BLOCKS`."""

    def __init__(self, shape, dtype, device):
        self.device = device
        self.rows = HOST_BLOCKS.take(tuple(shape), dtype, pinned=device.type == "cuda")
        self._streams = _Streams.of(device)
        self._writing = None             # event of the last write-back, awaited before the rows are read

    def read_blocks(self, regions):
        """Each region's rows (r0, r1) on the device, in order; the next is already being copied meanwhile."""
        self._await_writes()
        ahead = None
        for i, (r0, r1) in enumerate(regions):
            current = ahead if ahead is not None else self._fetch(r0, r1)
            ahead = self._fetch(*regions[i + 1]) if i + 1 < len(regions) else None
            yield self._arrived(current)

    def _fetch(self, r0, r1):
        source = self.rows[r0:r1]
        if self._streams is None:
            return source.to(self.device), None
        # Allocated from the compute stream's pool, as everything else the call allocates: blocks the
        # allocator caches for a side stream serve only that stream, yet count as free memory.
        compute = torch.cuda.current_stream(self.device)
        rows = torch.empty(source.shape, dtype=source.dtype, device=self.device)
        fetcher = self._streams[0]
        fetcher.wait_stream(compute)       # the block's last user may still be queued there; the band in
                                           # use now is not yet, so the copy still runs beside it
        with torch.cuda.stream(fetcher):
            rows.copy_(source, non_blocking=True)
            done = torch.cuda.Event()
            done.record(fetcher)
        return rows, done

    def _arrived(self, entry):
        rows, done = entry
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        return rows

    def write_rows(self, r0, r1, rows):
        """Rows [r0, r1) from a contiguous device tensor; on CUDA the copy runs on the write-back stream."""
        if self._streams is None:
            self.rows[r0:r1].copy_(rows)
            return
        writer = self._streams[1]
        writer.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(writer):
            self.rows[r0:r1].copy_(rows, non_blocking=True)
            self._writing = torch.cuda.Event()
            self._writing.record(writer)
        rows.record_stream(writer)

    def _await_writes(self):
        if self._writing is not None:
            self._streams[0].wait_event(self._writing)
            torch.cuda.current_stream(self.device).wait_event(self._writing)
            self._writing = None

    def finish(self):
        """Every write-back done (before the rows are read on the host)."""
        if self._writing is not None:
            self._writing.synchronize()
            self._writing = None

    def __del__(self):
        rows = getattr(self, "rows", None)
        if rows is not None and HOST_BLOCKS is not None:     # None while the interpreter shuts down
            HOST_BLOCKS.give_back(rows, self._streams)


class HostMap(PinnedRows):
    """A map kept in (pinned) host memory, rows outermost in the map's own layout: (H, N, C, W) for
    contiguous maps, (H, N, W, C) for channels_last ones, so a band of rows moves in one copy and a
    channels_last band needs no transposing on the device either."""

    def __init__(self, shape, dtype, device, channels_last):
        n, c, h, w = shape
        self.shape, self.dtype, self.channels_last = tuple(shape), dtype, channels_last
        inner = (n, w, c) if channels_last else (n, c, w)
        super().__init__((h, *inner), dtype, device)

    @property
    def map(self):
        """As a writer (written over its own input, see Lagged): the map written is itself."""
        return self

    def _from_rows(self, rows):
        return rows.permute(1, 3, 0, 2) if self.channels_last else rows.permute(1, 2, 0, 3)

    def _to_rows(self, band):
        rows = band.permute(2, 0, 3, 1) if self.channels_last else band.permute(2, 0, 1, 3)
        return rows.contiguous()

    def as_tensor(self):
        """The whole map as an (N, C, H, W) view of host memory."""
        return self._from_rows(self.rows)

    def read_bands(self, regions):
        """Each region's rows on the device as (N, C, rows, W)."""
        for rows in self.read_blocks(regions):
            yield self._from_rows(rows)

    def write(self, r0, r1, band):
        """Rows [r0, r1) from a device band."""
        self.write_rows(r0, r1, self._to_rows(band))


class HostBlocks:
    """Host memory for PinnedRows, kept for the next map and the next call.

    Pinning gigabytes (cudaHostAlloc) is a large share of a first tiled call, so a block a map no longer
    needs serves the next map of the call and the maps of later calls; `release()` hands them all back
    (with the allocator's cache, when asked to free memory). A block is reused only once the copies that
    used it are done (an event recorded on their streams when it was given back)."""

    def __init__(self):
        self._idle = []                  # [(block, [events])], uint8 tensors
        self._lock = threading.Lock()

    def take(self, shape, dtype, pinned):
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        block = None
        if pinned:
            with self._lock:
                fitting = [e for e in self._idle if nbytes <= e[0].numel() <= REUSE_SLACK * nbytes + (1 << 20)]
                if fitting:
                    entry = min(fitting, key=lambda e: e[0].numel())
                    self._idle.remove(entry)
                    block = entry[0]
                    for event in entry[1]:
                        event.synchronize()     # normally long done: the copies were awaited by the compute
        if block is None:
            block = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        return block[:nbytes].view(dtype).view(shape)

    def give_back(self, rows, streams):
        block = rows.untyped_storage()
        if not rows.is_pinned() or streams is None:
            return                         # pageable memory: freed with the tensor
        events = []
        for stream in streams:
            event = torch.cuda.Event()
            event.record(stream)
            events.append(event)
        whole = torch.empty(0, dtype=torch.uint8).set_(block)
        with self._lock:
            self._idle.append((whole, events))

    def idle_bytes(self):
        with self._lock:
            return sum(e[0].numel() for e in self._idle)

    def release(self):
        with self._lock:
            self._idle.clear()


REUSE_SLACK = 1.5      # a kept block serves a map this many times smaller at most
HOST_BLOCKS = HostBlocks()


class DeviceSink:
    """A map on the device, allocated at the first band in that band's layout."""

    def __init__(self, shape):
        self.shape, self.map = tuple(shape), None

    def write(self, r0, r1, band):
        if self.map is None:
            self.map = torch.empty(self.shape, dtype=band.dtype, device=band.device,
                                   memory_format=memory_format_of(band))
        self.map[..., r0:r1, :] = band

    def finish(self):
        pass


class TensorSink:
    """Writing into an existing device map (used to write a block's output over its input)."""

    def __init__(self, tensor):
        self.map = tensor

    def write(self, r0, r1, band):
        self.map[..., r0:r1, :] = band

    def finish(self):
        pass


class Lagged:
    """Writes each band one band late: the band below has read its halo rows from this band's region by
    then, so a block's output can go over its own input (one whole map instead of two)."""

    def __init__(self, sink):
        self.sink, self._pending = sink, None

    @property
    def map(self):
        return self.sink.map

    def write(self, r0, r1, band):
        if self._pending is not None:
            self.sink.write(*self._pending)
        self._pending = (r0, r1, band)

    def finish(self):
        if self._pending is not None:
            self.sink.write(*self._pending)
            self._pending = None
        self.sink.finish()


class Lazy:
    """A map that is never held: each band is computed from its source when read.

    `fn` maps a source band to a band `scale` times as tall; it reads `halo` source rows around each output
    row (a 3x3 conv, also after a nearest-2x upsample: 1)."""

    def __init__(self, fn, source, out_channels, scale=1, halo=1):
        self.fn, self.source, self.scale, self.halo = fn, source, scale, halo
        n, _c, h, w = source.shape
        self.shape = (n, out_channels, h * scale, w * scale)
        self.dtype, self.device = source.dtype, getattr(source, "device", None)
        self.channels_last = is_channels_last(source)

    def _source_region(self, r0, r1):
        h = self.source.shape[2]
        return max(0, r0 // self.scale - self.halo), min(h, -(-r1 // self.scale) + self.halo)

    def read_bands(self, regions):
        wanted = [self._source_region(r0, r1) for r0, r1 in regions]
        fmt = memory_format_of(self.source)
        for (r0, r1), (a0, _a1), band in zip(regions, wanted, read_bands(self.source, wanted)):
            y = self.fn(band.contiguous(memory_format=fmt))
            yield y[..., r0 - self.scale * a0:r1 - self.scale * a0, :]
