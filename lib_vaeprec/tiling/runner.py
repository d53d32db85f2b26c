"""Runs a coder stage by stage over whole maps, each stage band by band, as a Plan says.

Every GroupNorm normalises with the statistics of its whole input map (groupnorm_stats): they are summed
from the bands as the map is written, so the result equals the untiled one up to float rounding. Each
band carries only the halo rows its own stage needs (1-2), not the receptive field of the whole network.
"""
import torch
import torch.nn.functional as F

from .. import fast_groupnorm, groupnorm_stats
from ..forward_override import Replaced
from . import attention
from .layout import call_block
from .maps import DeviceSink, HostMap, Lagged, Lazy, TensorSink, is_channels_last, read_bands, spans
from .plan import MIN_BAND_ROWS


class _Stop(Exception):
    """Raised inside a block once the part we need has been computed."""


class MapSink:
    """A new map where the plan puts it ("device" or "host"), allocated at its first band."""

    def __init__(self, shape, where, device):
        self.shape, self.device = tuple(shape), device
        self._device = DeviceSink(shape) if where == "device" else None
        self._host = None

    def write(self, r0, r1, band):
        if self._device is not None:
            self._device.write(r0, r1, band)
            return
        if self._host is None:
            self._host = HostMap(self.shape, band.dtype, self.device, is_channels_last(band))
        self._host.write(r0, r1, band)

    def finish(self):
        pass

    @property
    def map(self):
        return self._device.map if self._device is not None else self._host


class StageRunner:
    def __init__(self, plan):
        self.plan = plan
        self.most_bands = 0               # bands of the most finely split stage

    # ----- passes -----
    def band_rows(self, channels, width, samples):
        return max(MIN_BAND_ROWS, self.plan.band_elems // max(1, samples * channels * width))

    def run_pass(self, source, compute, out_channels, halo, sink=None, stats=None, scale=1.0, align=1):
        """For each band of `source`: y = compute(band, r0, r1) over the band's run rows [r0, r1); its
        core goes to `sink` and into `stats`."""
        n, c, height, width = source.shape
        rows = self.band_rows(max(c, out_channels), width, n)
        bands = spans(height, rows, halo, align)
        self.most_bands = max(self.most_bands, len(bands))
        for (c0, c1, r0, r1), band in zip(bands, read_bands(source, [(r0, r1) for _, _, r0, r1 in bands])):
            y = compute(band, r0, r1)
            core = y[..., int((c0 - r0) * scale):int((c1 - r0) * scale), :]
            if stats is not None:
                stats.add(core)
            if sink is not None:
                sink.write(int(c0 * scale), int(c1 * scale), core)
        if sink is not None:
            sink.finish()

    def stats_of(self, x, groups):
        """Whole-map statistics by a pass of its own (for a map computed on the fly)."""
        stats = groupnorm_stats.GroupStats(groups)
        self.run_pass(x, lambda band, r0, r1: band, x.shape[1], halo=0, stats=stats)
        return stats

    def _sink(self, step, source):
        if step.where == "in place":
            return Lagged(source if isinstance(source, HostMap) else TensorSink(source))
        return MapSink(step.shape, step.where, self.plan.device)

    def _input(self, band, step):
        band = band.to(step.dtype) if step.dtype is not None else band
        return fast_groupnorm.to_channels_last(band) if step.channels_last else band

    # ----- stages -----
    def run(self, layout, x):
        """The coder's output for input x (a device tensor; on the host only if the plan put it there)."""
        h, stats = x, None
        steps = self.plan.stages
        for i, step in enumerate(steps[:-1]):
            groups = _groups_read_by(steps[i + 1], layout)
            h, stats = self.stage(step, h, stats, groups)
        return self.output(layout, steps[-1], h, stats)

    def stage(self, step, x, x_stats, groups):
        """The stage's output map and its statistics for the next GroupNorm (None where not gathered)."""
        out_stats = groupnorm_stats.GroupStats(groups) if groups else None
        parts = attention.parts_of(step.module) if step.kind == "attention" else None
        if step.kind == "resnet":
            result = self.resnet(step, x, x_stats, out_stats)
        elif parts is not None:
            result = self.attention(step, parts, x, x_stats, out_stats)
        elif step.kind in ("attention", "mid"):      # of a structure the bands do not know: run whole
            result, out_stats = self.whole(step, x), None
        elif step.where == "on the fly":
            scale = 2 if step.kind == "up" else 1
            result = Lazy(lambda band, step=step: step.module(self._input(band, step)), x, step.shape[1],
                          scale=scale, halo=1)
            out_stats = None
        else:
            scale, halo, align = {"up": (2.0, 1, 1), "down": (0.5, 2, 2)}.get(step.kind, (1.0, 1, 1))
            sink = self._sink(step, x)
            # pad (0, 1, 0, 1) + stride-2 conv: even-aligned bands with a 2-row halo give exact cores.
            self.run_pass(x, lambda band, r0, r1: step.module(self._input(band, step)), step.shape[1], halo,
                          sink, out_stats, scale=scale, align=align)
            result = sink.map
        return result, out_stats

    def resnet(self, step, x, stats1, out_stats):
        """norm1 with x's statistics; conv1's output kept whole for norm2's statistics when the plan says
        so (else recomputed); then the whole block, band by band."""
        block = step.module
        if stats1 is None:
            stats1 = self.stats_of(x, block.norm1.num_groups)
        norm1 = Replaced(block.norm1, lambda t: groupnorm_stats.normalise(block.norm1, t, stats1))
        h_channels = block.conv1.out_channels

        def up_to_norm2(band, r0, r1):
            def capture(h):
                raise _Stop(h)
            with norm1, Replaced(block.norm2, capture):
                try:
                    call_block(block, self._input(band, step))
                except _Stop as stop:
                    return stop.args[0]
            raise RuntimeError("resnet block never reached norm2")

        stats2 = groupnorm_stats.GroupStats(block.norm2.num_groups)
        h_sink = DeviceSink((x.shape[0], h_channels) + tuple(x.shape[2:])) if step.keep_h else None
        self.run_pass(x, up_to_norm2, h_channels, halo=1, sink=h_sink, stats=stats2)
        h = h_sink.map if h_sink is not None else None
        norm2 = Replaced(block.norm2, lambda t: groupnorm_stats.normalise(block.norm2, t, stats2))

        def whole_block(band, r0, r1):
            band = self._input(band, step)
            with norm1, norm2:
                if h is None:
                    return call_block(block, band)
                with Replaced(block.conv1, lambda _t: h[..., r0:r1, :]):
                    return call_block(block, band)

        sink = self._sink(step, x)
        self.run_pass(x, whole_block, step.shape[1], halo=1 if h is not None else 2, sink=sink, stats=out_stats)
        return sink.map

    def attention(self, step, parts, x, x_stats, out_stats):
        if x_stats is None:
            x_stats = self.stats_of(x, parts.norm.num_groups)
        n, c, height, width = x.shape
        rows = self.band_rows(c, width, n)
        regions = [(r0, r1) for _, _, r0, r1 in spans(height, rows, 0)]
        bands = (self._input(band, step) for band in read_bands(x, regions))
        store = (attention.HostKeysValues(parts.heads, step.kv_chunk, self.plan.device) if step.kv_chunk
                 else attention.DeviceKeysValues(parts.heads))
        keys_values = attention.keys_and_values(parts, bands, x_stats, x.shape, store)
        sink = self._sink(step, x)
        work = self.plan.work_bytes
        self.run_pass(x, lambda band, r0, r1: attention.answer(parts, self._input(band, step), x_stats,
                                                               keys_values, work),
                      c, halo=0, sink=sink, stats=out_stats)
        return sink.map

    def whole(self, step, x):
        """A block of unknown structure, run on the whole map on the device."""
        if not torch.is_tensor(x):
            sink = DeviceSink(x.shape)
            self.run_pass(x, lambda band, r0, r1: band, x.shape[1], halo=0, sink=sink)
            x = sink.map
        return call_block(step.module, self._input(x, step))

    def output(self, layout, step, x, stats):
        """norm_out -> SiLU -> conv_out (-> tanh), with norm_out's statistics from the whole map."""
        if stats is None:
            stats = self.stats_of(x, layout.norm_out.num_groups)
        norm = Replaced(layout.norm_out, lambda t: groupnorm_stats.normalise(layout.norm_out, t, stats))

        def fn(band, r0, r1):
            with norm:
                h = layout.norm_out(self._input(band, step))
            h = layout.conv_out(F.silu(h))
            return torch.tanh(h) if layout.tanh_out else h
        sink = MapSink(step.shape, step.where, self.plan.device)
        self.run_pass(x, fn, step.shape[1], halo=1, sink=sink)
        result = sink.map
        if isinstance(result, HostMap):      # back on the device once every other map is gone
            result.finish()
            return result.as_tensor().to(self.plan.device)
        return result


def _groups_read_by(step, layout):
    """GroupNorm groups of the norm that reads a stage's output first (None: no GroupNorm does)."""
    module = step.module
    if step.kind == "out":
        return layout.norm_out.num_groups
    if step.kind == "resnet":
        return module.norm1.num_groups
    if step.kind == "attention":
        parts = attention.parts_of(module)
        return parts.norm.num_groups if parts is not None else None
    return None
