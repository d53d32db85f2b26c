"""The VAE call path: cast in, run (tiled when asked or when memory runs out), guard, fp32 out, measure.

`VaeEngine` attaches to one VAE module (diffusers AutoencoderKL, ldm/sgm AutoencoderKL, the Forge
backends' VAE modules: anything with `decode(z, ...)` and `encode(x, ...)`) by shadowing those two
methods on the instance. `detach()` removes every trace: the methods (or whatever the host had put
there before us), the weights' dtype and device, the hooks.
"""
import contextlib
import logging
import threading
import weakref

import torch

from . import coder_switches, dtypes, fast_groupnorm, groupnorm_kernels, guard, memory, outputs, policy, tiling
from .casting import WeightCast
from .device_caps import caps_of
from .offload import Offloader
from .banded_conv import BandedConvs
from .fast_groupnorm import FastGroupNorms
from .fused_blocks import FusedBlocks
from .fused_upsample import FusedUpsamplers
from .mixed import BlockPrecision
from .speed import CompiledCoders, to_memory_format
from .options import VaeOptions
from .stats import CallStats, measure

log = logging.getLogger("vae_precision")
_warned = set()
# module -> weak reference to the engine attached to it. Both weak: the engine lives as long as its wrapper
# on the module, and a module the host drops is freed with its engine.
_ENGINES = weakref.WeakKeyDictionary()


def warn_once(message):
    if message not in _warned:
        _warned.add(message)
        log.warning("VAE Precision: %s", message)


class VaeEngine:
    METHODS = ("decode", "encode")

    def __init__(self, module, options: VaeOptions = VaeOptions(), fp16_safe=True, on_call=None,
                 follows_caller=True):
        self.module = module
        self.options = options
        self.fp16_safe = fp16_safe          # learned False after an fp16 overflow under 'auto'
        self.on_call = on_call              # receives each CallStats
        # One call at a time: calls share the module's weights, dtype and instance forwards (a web UI's
        # API serves requests on several threads). Re-entrant for the calls a call makes itself.
        self._lock = threading.RLock()
        # follows_caller: the caller's own loads, conversions and writes win (casting.py); a web UI's adapter
        # answers its host's recasts itself (hosts/adapter.py).
        self.caster = WeightCast(module, follow_caller=follows_caller, lock=self._lock)
        self._weights_seen = self.caster.generation      # the caster's generation mixed's ranges are for
        self.offloader = Offloader(options.offload)
        self._blocks = BlockPrecision(module)   # mixed: the blocks' measured ranges and input casts
        self._compiled = CompiledCoders()
        self._fused = FusedUpsamplers()
        self._fast_norms = FastGroupNorms()
        self._fused_blocks = FusedBlocks()
        self._banded = BandedConvs()
        self._shadowed = {}                 # method name -> what the instance dict held before (or None)
        self.last_call = None               # CallStats of the last call that returned (None after one raised)

    # ----- attaching -----
    @property
    def attached(self):
        return bool(self._shadowed)

    def attach(self):
        with self._lock:
            if self.attached:
                return self
            self._attach()
            _ENGINES[self.module] = weakref.ref(self)
            return self

    def _attach(self):
        for name in self.METHODS:
            if not hasattr(self.module, name):
                continue
            previous = self.module.__dict__.get(name)
            self._shadowed[name] = previous
            original = previous if previous is not None else getattr(self.module, name)
            setattr(self.module, name, self._make_wrapper(name, original))

    def _make_wrapper(self, kind, original):
        engine = self

        def wrapper(x, *args, **kwargs):
            return engine.run(kind, original, x, *args, **kwargs)
        wrapper.__wrapped__ = original
        wrapper.vae_precision_engine = self
        return wrapper

    def detach(self):
        """Leaves the module exactly as the host has it: methods, dtype, device.

        If something has wrapped our wrapper since (A1111's lowvram on a model switch, another library),
        that wrapper stays where it is and ours, underneath, only passes calls through from now on."""
        with self._lock:
            for name, previous in self._shadowed.items():
                current = self.module.__dict__.get(name)
                if getattr(current, "vae_precision_engine", None) is not self:
                    continue
                if previous is None:
                    self.module.__dict__.pop(name, None)
                else:
                    setattr(self.module, name, previous)
            self._shadowed.clear()
            if engine_of(self.module) is self:
                del _ENGINES[self.module]
            self.release_weights()

    def release_weights(self):
        """Undoes offload and casting, keeping the wrappers (used before the host reloads weights: mixed
        measures the new ones again)."""
        with self._lock:
            self._release_weights()
            self._blocks.forget()

    def _release_weights(self):
        self._blocks.remove()
        self._compiled.remove()
        self._fused.remove()
        self._fast_norms.remove()
        self._fused_blocks.remove()
        self._banded.remove()
        to_memory_format(self.module, channels_last=False)
        self.offloader.return_home(self.module)
        self.caster.restore()

    def set_options(self, options: VaeOptions):
        with self._lock:
            if options.offload != self.offloader.mode:
                self.offloader.return_home(self.module)
                self.offloader = Offloader(options.offload)
            self.options = options

    # ----- running -----
    def precision_for(self, device):
        return policy.resolve(self.options.dtype, caps_of(device), self.fp16_safe, self.options.avoid_emulated)

    def _host_dtype(self):
        return dtypes.of_module(self.module, torch.float32)

    def _prepare_weights(self, precision, kind=None):
        """Casts the weights for `precision` (None: the host's own back); with `mixed`, the blocks of `kind`
        measured so far each to its own dtype. Returns the dtype the call's input goes in."""
        if precision is None:
            self._blocks.remove()
            self.caster.restore()
            return self._host_dtype()
        self.caster.adopt_host_changes()
        if self.caster.generation != self._weights_seen:   # new weights written (or loaded) since: measure them
            self._weights_seen = self.caster.generation
            self._blocks.forget()
        plan, module_dtypes = self._block_plan(precision, kind)
        self.caster.cast(precision.dtype, module_dtypes)
        if plan:
            self._blocks.install(kind, plan)
            return self._blocks.first_dtype(kind, plan)
        self._blocks.remove()
        return precision.dtype

    def rounded_weights(self):
        """The 16-bit dtypes the weights had been rounded to before this engine cast them (a VAE the host
        loaded at that dtype): what runs at a wider dtype starts from them."""
        return sorted({d for d in self.caster.source_dtypes() if d in (torch.float16, torch.bfloat16)},
                      key=dtypes.name_of)

    def _block_plan(self, precision, kind):
        """mixed: ({block name: dtype}, {module name: dtype}) once the blocks of `kind` are measured."""
        if precision is None or not precision.mixed or kind is None:
            return {}, {}
        return self._blocks.plan(kind, torch.float16, precision.dtype)

    def prepare(self, device):
        """Casts the weights for a call on `device` now (hosts do it at load time, before they might
        recast the module themselves). Returns the Precision, or None for "host default"."""
        with self._lock:
            precision = self.precision_for(torch.device(device))
            self._prepare_weights(precision)
            return precision

    def run(self, kind, original, x, *args, **kwargs):
        if not self.options.enabled or not self.attached or not torch.is_tensor(x):
            return original(x, *args, **kwargs)
        with self._lock:
            if not self.attached:          # detached while this call waited for the one before it
                return original(x, *args, **kwargs)
            self.last_call = None
            if _needs_gradients(self.module, x):
                result, stats = self._run_with_gradients(kind, original, x, args, kwargs)
            else:
                result, stats = self._run(kind, original, x, args, kwargs)
            self.last_call = stats
            on_call = self.on_call
        if on_call is not None:
            _tell(on_call, stats)
        return result

    def _run(self, kind, original, x, args, kwargs):
        opts = self.options
        device = self.offloader.compute_device(self.module, x.device)
        precision = self.precision_for(device)
        if precision is not None and precision.warning:
            warn_once(precision.warning)
        stats = CallStats(kind=kind, samples=x.shape[0], device=device.type,
                          emulated=precision.emulated if precision is not None else "")
        bad_input = _bad_input(kind, x, stats)
        try:
            # Autocast off where we chose the dtype: a host's autocast region (A1111's and sgm's
            # decode_first_stage can open one) would otherwise override it. Under "host default" the host's
            # region stays: its pixels are the host's own.
            own_dtype = _autocast_off(device) if precision is not None else contextlib.nullcontext()
            with torch.no_grad(), own_dtype, _cudnn_benchmark(opts.cudnn_benchmark), measure(stats, device):
                self.offloader.before_call(self.module, device)
                dtype = self._prepare_weights(precision, kind)
                if precision is not None:
                    stats.rounded_weights = tuple(dtypes.name_of(d) for d in self.rounded_weights())
                plan, _ = self._block_plan(precision, kind)
                stats.dtype = "mixed" if plan else dtypes.name_of(dtype)
                stats.blocks = self._blocks.label(plan, torch.float16)
                x_in = self._apply_speed_options(x.to(device, dtype), device, host_arithmetic=precision is None)
                self._fused_blocks.ran = False
                # mixed: the first call of each kind runs in the safe dtype and measures the blocks' ranges
                measuring = precision is not None and precision.mixed and not plan
                with self._blocks.measuring(kind) if measuring else contextlib.nullcontext():
                    result = self._run_sized(kind, original, x_in, args, kwargs, stats)
                result = outputs.to_float32(result)
                stats.kernels = "triton" if self._fused_blocks.ran else ""
                result = self._check_finite(kind, original, x, args, kwargs, device, precision, result, stats,
                                            bad_input)
                result = _to_device(result, x.device if device.type == "cpu" else device)
        finally:
            self.offloader.after_call(self.module)
            if self.offloader.mode != "keep":
                self._fused.forget_kernels()     # they would stay on the GPU between calls
                self._fused_blocks.forget_weights()
            if opts.free_memory:
                memory.release_cached(device, collect=False)
                tiling.release_host_memory()
        return result, stats

    def _run_with_gradients(self, kind, original, x, args, kwargs):
        """With gradients asked for (grad mode on, and the input or the VAE's weights require grad: training
        through the VAE), the VAE runs as the host has it, untiled, under torch.autocast in the chosen
        16-bit dtype, so that gradients reach the host's own weights."""
        device = x.device
        precision = self.precision_for(device)
        dtype = precision.dtype if precision is not None else None
        autocast = dtype in (torch.float16, torch.bfloat16)
        warn_once("gradients are on for a VAE call, so it runs with autograd: untiled, weights as the host has "
                  f"them{f', under torch.autocast({dtypes.name_of(dtype)})' if autocast else ''}; wrap inference "
                  "in torch.no_grad() for VAE Precision's own path")
        self._release_weights()
        stats = CallStats(kind=kind, samples=x.shape[0], device=device.type,
                          dtype=dtypes.name_of(dtype) if autocast else dtypes.name_of(self._host_dtype()))
        bad_input = _bad_input(kind, x, stats)
        context = torch.autocast(device.type, dtype=dtype) if autocast else contextlib.nullcontext()
        with context, measure(stats, device):
            result = outputs.to_float32(original(x, *args, **kwargs))
        # Reported as on the normal path; not redone (a redo would not be part of the autograd graph).
        found = guard.nonfinite_samples(outputs.main_tensor(result).detach())
        stats.nonfinite_left = len(found[~torch.isin(found, bad_input)])
        if stats.nonfinite_left:
            log.warning("VAE Precision: %d of %d %s outputs are NaN/Inf with gradients on (not redone)",
                        stats.nonfinite_left, x.shape[0], kind)
        return result, stats

    def _apply_speed_options(self, x, device, host_arithmetic=False):
        if self.options.channels_last:
            to_memory_format(self.module, channels_last=True)
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self.options.compile and device.type == "cuda"
        # Under torch.compile the compiler's own code for these layers measured faster: eager only. They
        # round differently, and "host default" promises the web UI's own pixels: not there either.
        leaner = not compiled and not host_arithmetic
        _toggle(self._compiled, compiled, self.module)
        _toggle(self._fused, self.options.fused_upsample and leaner, self.module)
        _toggle(self._fast_norms, self.options.fast_groupnorm and leaner, self.module)
        # The fused blocks come with fast GroupNorm: their kernels are its Triton form (groupnorm_kernels);
        # not beside low-memory convolutions, whose banded convs they would bypass.
        _toggle(self._fused_blocks, self.options.fast_groupnorm and leaner and not self.options.low_memory
                and groupnorm_kernels.triton is not None, self.module)
        _toggle(self._banded, self.options.low_memory and not compiled, self.module)
        return x

    def _layers_in_use(self, device):
        """Which of the leaner eager layers this call runs with (they set its untiled peak)."""
        if self.options.compile and device.type == "cuda":
            return "plain"
        if self.options.low_memory and device.type == "cuda":
            return "low_memory"
        if not self._fused.installed:
            return "plain"
        return "fast" if self._fast_norms.installed and device.type in fast_groupnorm.DEVICE_TYPES else "fused"

    def _run_sized(self, kind, original, x, args, kwargs, stats):
        """The call in the memory there is, down a ladder of rungs (`_rungs`), each slower and leaner than
        the one before. A rung that runs out of memory, or whose plan does not fit, hands over to the next;
        the last one's failure is the call's.

        After an out-of-memory error the free-memory reading is known to be wrong (memory was taken
        between the reading and the allocation, or an allocator cap it does not see), so the rungs after
        it plan within `ladder.limit`: a share of what the failed rung asked for, and of what the device
        did hold before it failed."""
        ladder = _Ladder(x.device)
        rungs = self._rungs(kind, original, x, args, kwargs, stats, ladder)
        failed = failed_rung = None
        for i, (name, rung) in enumerate(rungs):
            if name == "tiled in less memory" and ladder.limit is None:
                continue           # nothing ran out of memory: the reading stands, and its plan did not fit
            if failed is not None:
                # Here, outside the except block, the failed rung's frames (and tensors) are gone.
                memory.release_cached(x.device)
                stats.rungs_failed.append(failed_rung)
                if name == "on the CPU":     # said in the CPU rung's own line
                    ladder.why_cpu = f"{kind} {failed_rung} {failed}"
                else:
                    log.warning("VAE Precision: %s %s %s; running it %s", kind, failed_rung, failed, name)
            last = i == len(rungs) - 1
            ladder.start()
            try:
                result = rung()
                tiling.note_call_ran(x.device)
                return result
            except tiling.PlanError as error:
                if last:
                    raise
                failed = f"does not fit: {error}"
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled here
                if last or not memory.is_out_of_memory(error):
                    raise
                ladder.ran_out()
                failed = "ran out of memory" + (f" (it asked for {_gib(ladder.asked)})" if ladder.asked else "")
            failed_rung = name
        raise AssertionError("unreachable: the last rung returns or raises")

    def _rungs(self, kind, original, x, args, kwargs, stats, ladder):
        """[(name, run)]: untiled (with low-memory convolutions where only they fit); tiled as planned from
        free memory; tiled in less memory (only after an out-of-memory error: within what failed); tiled
        with the least memory (a small fixed plan that reads no free memory); then on the CPU. Tiling
        `auto` starts where the estimate says the call fits, `always` at the tiled rung, `off` skips the
        tiled rungs."""
        mode, layers = self.options.tiling, self._layers_in_use(x.device)
        # diffusers' slicing, kept for untiled calls, runs one image at a time
        one_call = x[:1] if coder_switches.slices(self.module, x) else x

        def fits(with_layers):
            # Low-memory convolutions get more headroom: near the limit the allocator's churn made a
            # 2048² decode with 8 GB free take 883 ms, slower than tiling (docs/benchmarks.md).
            share = LOW_MEMORY_SHARE if with_layers == "low_memory" and layers != "low_memory" \
                else tiling.UNTILED_SHARE
            return tiling.fits_untiled(self.module, kind, one_call, with_layers, share)
        route = choose_route(mode, layers, fits, can_band=_bands_help(x) and not self.options.compile)
        call = (kind, original, x, args, kwargs, stats)
        untileable = tiling.why_untileable(self.module, kind) if mode != "off" else None
        if untileable and route == "tiled":
            log.warning("VAE Precision: %s runs untiled: %s", kind, untileable)
        rungs = []
        if route != "tiled" or untileable:
            rungs.append(("untiled", lambda: self._untiled(*call, low_memory=route == "low_memory", ladder=ladder)))
        if mode != "off" and not untileable:
            rungs.append(("tiled", lambda: self._tiled(*call, ladder=ladder)))
            rungs.append(("tiled in less memory", lambda: self._tiled(*call, ladder=ladder, within_failed=True)))
            rungs.append(("tiled with the least memory", lambda: self._tiled(*call, ladder=ladder, lean=True)))
        if x.device.type != "cpu":
            rungs.append(("on the CPU", lambda: self._on_cpu(*call, why=ladder.why_cpu)))
        elif rungs[0][0] != "untiled" and _small_for_any_host(self.module, kind, one_call, layers):
            # Where the tiled plans find no room in RAM that reads short (a sandbox's figure), a call this
            # small is tried whole before giving up: no host running a web UI lacks that much.
            rungs.append(("untiled", lambda: self._untiled(*call, ladder=ladder)))
        return rungs

    def _untiled(self, kind, original, x, args, kwargs, stats, low_memory=False, ladder=None):
        if ladder is not None:
            layers = "low_memory" if low_memory else self._layers_in_use(x.device)
            ladder.asked = tiling.untiled_bytes(self.module, kind, x, layers)
        with self._low_memory_for_call(low_memory), coder_switches.obeyed(self.module, slicing=True):
            return original(x, *args, **kwargs)

    def _tiled(self, kind, original, x, args, kwargs, stats, ladder=None, lean=False, within_failed=False):
        """A tiled run: planned from free memory (`ladder.limit` once a rung ran out of it); with
        `within_failed` (after an out-of-memory error), with the band from that limit, not the tile size
        asked for; `lean`: the least-memory plan."""
        limit = ladder.limit if ladder is not None else None
        untiled = tiling.untiled_bytes(self.module, kind, x, self._layers_in_use(x.device))
        tile_px = 0 if within_failed else self.options.tile_size
        plan = tiling.plan_for(self.module, kind, x, tile_px=tile_px, lean=lean, ceiling=untiled,
                               free_bytes=limit, reserve=tiling.first_call_reserve(x.device))
        if ladder is not None:
            if within_failed and ladder.failed_ask and plan.device_need >= ladder.failed_ask:
                raise tiling.PlanError(f"its plan needs {_gib(plan.device_need)}, no less than the one that ran "
                                       "out of memory")
            ladder.asked = plan.device_need
        with coder_switches.obeyed(self.module, slicing=False):     # the plan is for the whole batch
            return tiling.run_tiled(original, self.module, kind, plan, x, args, kwargs, stats)

    def _on_cpu(self, kind, original, x, args, kwargs, stats, why=None):
        """The last rung: the whole call on the CPU, in what the CPU runs natively (tiled there too if it
        would not fit the RAM), the result back on the call's device. `why`: what failed on the device."""
        cpu = torch.device("cpu")
        precision = policy.resolve("auto", caps_of(cpu))
        log.warning("VAE Precision: %s runs on the CPU in %s (slow)%s", kind, dtypes.name_of(precision.dtype),
                    f": {why}" if why else "")
        mover = Offloader("cpu")
        sequential = self.offloader.mode == "sequential"
        if sequential:
            self.offloader.after_call(self.module)     # its layer hooks would bring weights back to the GPU
        mover.before_call(self.module, cpu)
        try:
            self._prepare_weights(precision)
            x_cpu = self._apply_speed_options(x.to(cpu, precision.dtype), cpu)
            stats.device = "cpu"
            result = self._run_sized(kind, original, x_cpu, args, kwargs, stats)
            return outputs.to_float32(result)
        finally:
            back = self.precision_for(x.device)
            self._prepare_weights(back, kind)
            mover.return_home(self.module)
            self._apply_speed_options(x, x.device, host_arithmetic=back is None)
            if sequential:
                self.offloader.before_call(self.module, x.device)

    @contextlib.contextmanager
    def _low_memory_for_call(self, on):
        if not on:
            yield
            return
        log.info("VAE Precision: running this call with low-memory convolutions, which fit untiled")
        self._banded.install(self.module)
        try:
            yield
        finally:
            if not self.options.low_memory:
                self._banded.remove()

    def _check_finite(self, kind, original, x, args, kwargs, device, precision, result, stats, bad_input):
        """With the NaN fallback on, redoes the samples that came out NaN/Inf (only those, and not those whose
        input already was) at a safer dtype each time; says which are still broken. A `mixed` call's
        failures are redone in its safe dtype while its blocks' ranges are measured again."""
        found = guard.nonfinite_samples(outputs.main_tensor(result))
        bad = found[~torch.isin(found, bad_input)]
        mixed = bool(self._block_plan(precision, kind)[0])
        dtype = precision.dtype if precision is not None else self._host_dtype()
        current = torch.float16 if mixed else dtype        # mixed's fast blocks are fp16
        label = "mixed" if mixed else current
        while len(bad) and self.options.nan_fallback and current in dtypes.SAFER:
            safer = dtypes.SAFER[current]
            if safer == torch.bfloat16 and not caps_of(device).native_bf16:
                safer = torch.float32
            self._blocks.remove()
            self.caster.cast(safer)
            measuring = self._blocks.measuring(kind) if mixed else contextlib.nullcontext()
            with _autocast_off(device), measuring:     # a host's autocast region would keep the unsafe dtype
                redo = outputs.to_float32(self._run_sized(kind, original, x[bad.to(x.device)].to(device, safer),
                                                          args, kwargs, stats))
            stats.fallbacks.append(guard.Fallback(label, safer, len(bad), x.shape[0]))
            result = outputs.replace_samples(result, bad.to(outputs.main_tensor(result).device), redo)
            bad = bad[guard.nonfinite_samples(outputs.main_tensor(redo))]
            if current == torch.float16 and self.options.dtype == "auto" and self.fp16_safe:
                self.fp16_safe = False
                warn_once("this VAE overflows in fp16; 'auto' uses a safer dtype for it from now on")
            current = label = safer
        stats.nonfinite_left = len(bad)
        if stats.fallbacks:
            log.warning("VAE Precision: %s gave non-finite values; redone: %s", kind,
                        ", ".join(str(f) for f in stats.fallbacks))
            # back to the chosen dtypes for the next call (with mixed, from the ranges measured again)
            self._prepare_weights(self.precision_for(device), kind)
        if len(bad):
            why = ("with the NaN fallback off" if not self.options.nan_fallback
                   else f"in {dtypes.name_of(current)}, the safest dtype")
            log.warning("VAE Precision: %d of %d %s outputs are NaN/Inf %s", len(bad), x.shape[0], kind, why)
        return result


def _bad_input(kind, x, stats):
    """The samples whose input is already NaN/Inf (the sampler's doing), counted in `stats` and said."""
    bad = guard.nonfinite_samples(x.detach())
    if len(bad):
        stats.nonfinite_input = len(bad)
        log.warning("VAE Precision: %d of %d %s inputs are already NaN/Inf (made before the VAE, by the "
                    "sampler or the image given): left as they are, not redone", len(bad), x.shape[0], kind)
    return bad


@contextlib.contextmanager
def _cudnn_benchmark(on):
    """cuDNN autotuning for the VAE call only; the host's own setting is back afterwards."""
    if not on:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


LOW_MEMORY_SHARE = 0.7    # of free memory, for the estimate of an untiled call switched to low-memory convs


class _Ladder:
    """What the rungs of one call learn about device memory from the ones that failed.

    A rung sets `asked` (its untiled estimate or its plan's device need) before it allocates; when it runs
    out of memory, `limit` becomes a share of that (SHRINK) and, on CUDA, of what the allocator did hold
    above the rung's start before the error (HELD_SHARE): the memory there really is lies between the
    two."""
    SHRINK = 0.5
    HELD_SHARE = 0.8

    def __init__(self, device):
        self.device = device
        self.asked = self.failed_ask = None
        self.limit = None           # device bytes the next plans may count on (None: the reading stands)
        self.why_cpu = None
        self._base = 0

    def start(self):
        self.asked = None
        if self.device.type == "cuda":
            self._base = torch.cuda.memory_allocated(self.device)

    def ran_out(self):
        self.failed_ask = self.asked
        limits = [self.limit] if self.limit is not None else []
        if self.asked:
            limits.append(self.SHRINK * self.asked)
        if self.device.type == "cuda":
            held = torch.cuda.max_memory_allocated(self.device) - self._base
            if held > 0:
                limits.append(self.HELD_SHARE * held)
        if limits:
            self.limit = int(min(limits))


def _gib(num):
    return f"{num / 2**30:.1f} GiB" if num >= 2**30 else f"{num / 2**20:.0f} MiB"


def choose_route(mode, layers, fits, can_band):
    """How a call runs: "untiled", "low_memory" (untiled, banded convolutions) or "tiled".

    Under tiling `auto`, a call that would not fit as it is tries low-memory convolutions before
    tiling: measured on the H100 at 2048², they cost 1.13x the time and tiling 1.28x (docs/benchmarks.md).
    `fits(layers)` says whether an untiled call with those layers fits free memory."""
    if mode == "always":
        return "tiled"
    if mode == "off" or fits(layers):
        return "untiled"
    if layers != "low_memory" and can_band and fits("low_memory"):
        return "low_memory"
    return "tiled"


def _small_for_any_host(module, kind, x, layers):
    return tiling.untiled_bytes(module, kind, x, layers) < tiling.UNTILED_SHARE * memory.UNKNOWN_HOST_BYTES


def _bands_help(x):
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


def _toggle(installer, on, module):
    if on:
        installer.install(module)
    else:
        installer.remove()


def _autocast_off(device):
    try:
        return torch.autocast(device.type, enabled=False)
    except (RuntimeError, ValueError):   # a device type without autocast support
        return contextlib.nullcontext()


def _to_device(result, device):
    tensor = outputs.main_tensor(result)
    return result if tensor.device == device else outputs.with_tensor(result, tensor.to(device))


def engine_of(module):
    """The engine attached to `module`, if any (also under a wrapper put on top of ours later)."""
    ref = _ENGINES.get(module)
    engine = ref() if ref is not None else None
    if engine is not None:
        return engine
    wrapper = module.__dict__.get("decode")
    return getattr(wrapper, "vae_precision_engine", None)


def _tell(observer, stats):
    """Hands a call's stats to an observer (a caller's on_call, a web UI's infotext bookkeeping): one that
    raises costs a warning, once, never the image."""
    try:
        observer(stats)
    except Exception as error:  # noqa: BLE001 - whatever an observer raises, the image is returned
        name = getattr(observer, "__qualname__", type(observer).__name__)
        warn_once(f"the observer of VAE calls {name} raised {type(error).__name__}: "
                  f"{' '.join(str(error).split())[:200]}; the image is returned, its stats were not recorded")


def _needs_gradients(module, x):
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())
