"""What every host adapter does with the VAE the host has loaded: attach an engine per the current
options, keep the host's own dtype record consistent with ours, step aside while the host loads weights,
and take everything off again ("off means off").

A host module (a1111, forge, reforge) says where the VAE is (`target_of`), which host function loads
weights into it and how the host chooses the dtype it loads them at (`install_hooks`, `loading_at`), which
of the host's flags and settings the extension's dtype choice overrides (`host_choices`).

While the extension picks the dtype (enabled, dtype not "host default"), the host loads VAE weights at
LOAD_DTYPE: a host that loads them at bf16 (Forge and reForge on recent NVIDIA GPUs, `--vae-in-bf16`) or
fp16 (A1111 without `--no-half-vae`) rounds them for good, and "fp32", or the fp32 NaN retry, would then
run on rounded weights. Handing back (disable, "host default") casts the VAE to the host's own dtype,
which gives the very weights the host would have loaded itself.
"""
import contextlib
import logging
import weakref

import torch

from ..casting import WeightCast
from ..dtypes import name_of
from ..engine import VaeEngine, engine_of, warn_once
from ..options import DEFAULTS
from ..policy import HOST_DEFAULT
from .holds import ValueHold
from .patches import Patches

log = logging.getLogger("vae_precision")
LOAD_DTYPE = torch.float32     # holds fp16, bf16 and fp32 weights exactly


class VaeTarget:
    """One VAE as the host holds it."""

    def __init__(self, module, device, hold):
        self.module = module          # what the engine attaches to (has decode/encode)
        self.device = device          # where the host runs it
        self.hold = hold              # the host's record of its dtype (ValueHold)


class HostAdapter:
    name = "host"

    def __init__(self):
        self.options = DEFAULTS
        self.patches = Patches()
        self._engines = weakref.WeakSet()       # engines we attached; they live as long as their module
        self._holds = weakref.WeakKeyDictionary()
        self._module_holds = weakref.WeakKeyDictionary()   # VAE module -> the hold on its host dtype record
        # VAE module -> its unrounded weights, kept on the CPU while the module is handed back at the host's
        # dtype and the extension stays on ("host default", or off for one render): picking a dtype again
        # starts from them, not from the rounded weights.
        self._unrounded = weakref.WeakKeyDictionary()
        self._said = set()
        self._listener = None
        self._loading = 0
        self.read_settings = None               # callable -> VaeOptions, for loads outside a render

    # ----- host specifics -----
    def target_of(self, sd_model):
        raise NotImplementedError

    def current_model(self):
        """The loaded model, without making the host load one."""
        return None

    def host_choices(self):
        """The host's own flags and settings that the extension's dtype choice overrides, as
        [(what, chosen)]: `chosen` when the user gave the flag or changed the setting from its default."""
        return []

    def install_hooks(self):
        pass

    def loading_at(self, dtype):
        """Context for a wrapped host load while the VAE must load at `dtype` (A1111: its load-time flags)."""
        return contextlib.nullcontext()

    # ----- the dtype the host loads the VAE at -----
    def options_now(self):
        """The options in force: the render's during a render, else the settings as they are now."""
        if not self.rendering and self.read_settings is not None:
            return self.read_settings()
        return self.options

    def picks_dtype(self, options=None):
        options = options if options is not None else self.options
        return options.enabled and options.dtype != HOST_DEFAULT

    def load_dtype(self, host_choice):
        """What the host's load-time dtype choice answers: LOAD_DTYPE while the extension picks the dtype."""
        return LOAD_DTYPE if self.picks_dtype(self.options_now()) else host_choice

    # ----- lifetime -----
    def install(self):
        self.install_hooks()
        return self

    def uninstall(self):
        self.patches.restore_all()
        self.disable_all()
        self._listener = None

    def hold(self, owner, attr, on_set=None, host_choice=None):
        hold = self._holds.get(owner)
        if hold is None:
            hold = self._holds[owner] = ValueHold(owner, attr, on_set, host_choice)
        return hold

    # ----- per-call stats -----
    def listen(self, callback):
        """Sends each VAE call's CallStats to `callback` (a bound method, held weakly: a render that ended
        in an exception leaves nothing behind that keeps counting)."""
        self._listener = weakref.WeakMethod(callback) if callback is not None else None

    @property
    def rendering(self):
        return self._listener is not None and self._listener() is not None

    def _dispatch(self, call):
        callback = self._listener() if self._listener is not None else None
        if callback is not None:
            callback(call)

    # ----- applying -----
    def engine_for(self, module):
        for engine in list(self._engines):
            if engine.module is module and engine.attached:
                return engine
        return engine_of(module)

    def apply(self, sd_model, options=None):
        """Brings the model's VAE in line with `options`; without them, with the render's options during a
        render, else with the settings as they are now (a load outside a render). Returns the engine."""
        if self._loading:            # the host is writing weights; `host_loading` applies when it is done
            self.options = options if options is not None else self.options
            return None
        if options is None and not self.rendering and self.read_settings is not None:
            options = self.read_settings()
        if options is not None:
            self.options = options
        target = self._target(sd_model)
        if target is None:
            return None
        if not self.options.enabled:
            self.disable_all(keep_unrounded=self.rendering)
            return None
        engine = self.engine_for(target.module)
        if engine is None:
            give_version_counters(target.module)
            engine = VaeEngine(target.module, self.options, on_call=self._dispatch, follows_caller=False).attach()
            self._engines.add(engine)
        engine.set_options(self.options)
        engine.on_call = self._dispatch
        device = torch.device("cpu") if self.options.offload == "cpu" else target.device
        if engine.precision_for(device) is None:   # "host default": the host's weights, the host's dtype
            self._release(target, engine)
            return engine
        self._unrounded_back(target.module)
        # Cast now rather than at the first call: the host may recast the module to its own record of
        # the dtype before then (A1111's encode path), and the originals must be saved before that.
        precision = engine.prepare(device)
        target.hold.hold(precision.dtype)
        self._say_overridden()
        self._say_if_rounded(engine, precision)
        return engine

    def _target(self, sd_model):
        target = self.target_of(sd_model)
        if target is not None:
            self._module_holds[target.module] = target.hold
        return target

    def _say_overridden(self):
        chosen = [what for what, by_user in self.host_choices() if by_user]
        if chosen:
            warn_once(f"the VAE dtype is chosen by VAE Precision's dtype setting, not by {', '.join(chosen)}; "
                      f"set it to 'host default' to let the web UI decide")
        others = [what for what, by_user in self.host_choices() if not by_user]
        message = (f"VAE Precision's dtype setting picks the VAE dtype; the web UI's {', '.join(others)} "
                   f"(as it is by default) gives way to it")
        if others and message not in self._said:
            self._said.add(message)
            log.info(message)

    def _say_if_rounded(self, engine, precision):
        """A VAE the host loaded while the extension did not pick the dtype (or that was handed back with the
        extension switched off in the settings) has the host's rounded weights: the chosen dtype runs on them,
        which the console says once (and each image's infotext, `stats.CallStats.rounded_weights`)."""
        rounded = {dtype for dtype in engine.rounded_weights() if precision.mixed or dtype != precision.dtype}
        if rounded:
            loaded_at = "/".join(sorted(name_of(dtype) for dtype in rounded))
            warn_once(f"this VAE holds the web UI's {loaded_at}-rounded weights (it was loaded, or handed back, "
                      f"while VAE Precision did not pick the dtype): {name_of(precision.dtype)} runs on them until "
                      f"the model is loaded again")

    def _release(self, target, engine):
        target.hold.release()
        if engine is not None:
            engine.release_weights()
        self._settle(target.module, target.hold, keep_unrounded=True)

    def _settle(self, module, hold, keep_unrounded=False):
        """Puts the module's weights at the dtype its host record says (the host's own, or LOAD_DTYPE
        while resting for a host load), the way the host itself casts its VAE: a module loaded unrounded
        then holds exactly what the host would have loaded. With keep_unrounded, the weights it had are
        kept on the CPU for the next time the extension picks the dtype."""
        dtype, owner = hold.value(), hold.owner
        if not isinstance(dtype, torch.dtype) or _all_of(module, dtype):
            return
        if keep_unrounded:
            kept = self._unrounded.get(module) or WeightCast(module)
            kept.cast(dtype)
            self._unrounded[module] = kept
        module.to(dtype)
        if hold.on_set is not None and owner is not None:
            hold.on_set(owner)

    def _unrounded_back(self, module):
        kept = self._unrounded.pop(module, None)
        if kept is not None:
            kept.restore()       # weights the host rewrote meanwhile stay the host's (version counters)

    def disable_all(self, keep_unrounded=False):
        """Off means off: every engine detached, every host dtype record given back, every VAE at the
        host's own dtype. keep_unrounded (off for one render) keeps unrounded weights for later renders."""
        for engine in list(self._engines):
            engine.detach()
            self._engines.discard(engine)
        for hold in list(self._holds.values()):
            hold.release()
        for module, hold in list(self._module_holds.items()):
            self._settle(module, hold, keep_unrounded)
        if not keep_unrounded:
            self._unrounded.clear()

    # ----- host weight loads -----
    @contextlib.contextmanager
    def host_loading(self, model=None):
        """Around a host function that writes weights into the VAE: the host's weights and dtype go back
        first (so it loads into what it expects, and its backups are its own), then we apply again."""
        self._loading += 1
        try:
            if self._loading == 1:
                rest = LOAD_DTYPE if self.picks_dtype(self.options_now()) else None
                self._step_aside(model if model is not None else self.current_model(), rest)
                with self.loading_at(rest):
                    yield
            else:
                yield
        finally:
            self._loading -= 1
            current = self.current_model()
            # A model still being built (not yet the current one) is left to model_loaded: the host may wrap
            # its VAE further before then (A1111's lowvram shadows decode/encode), and we go on top of that.
            if self._loading == 0 and (model is None or model is current):
                try:
                    self.apply(current)
                except Exception:  # noqa: BLE001 - never break the host's load; the next render retries
                    log.exception("VAE Precision: could not re-apply after the web UI loaded weights")

    def _step_aside(self, model, rest):
        """The host's weights back before it loads into the module: at its own dtype, or at `rest`
        (LOAD_DTYPE while the extension picks the dtype, so that nothing loaded in place is rounded)."""
        target = self._target(model) if model is not None else None
        if target is None:
            for hold in list(self._holds.values()):
                hold.release()
            return
        engine = self.engine_for(target.module)
        if engine is not None:
            engine.release_weights()
        if rest is None:
            self._unrounded.pop(target.module, None)    # the host loads new weights at its own dtype
            target.hold.release()
        else:
            self._unrounded_back(target.module)
            target.hold.rest_at(rest)
        self._settle(target.module, target.hold)

    def wrap_host_load(self, owner, name, model_arg):
        """Wraps a host function that loads VAE weights; `model_arg` names its model parameter (also
        taken from the first positional argument)."""
        def around(original, *args, **kwargs):
            model = kwargs.get(model_arg, args[0] if args else None)
            with self.host_loading(model):
                return original(*args, **kwargs)
        return self.patches.wrap(owner, name, around)


def _all_of(module, dtype):
    # A1111's VAE is a Lightning module: its `dtype` is whatever the last `.to()` said, and the host casts
    # decode inputs to it.
    if getattr(module, "dtype", dtype) != dtype:
        return False
    return all(t.dtype == dtype for t in module.parameters() if t.is_floating_point())


def give_version_counters(module):
    """Forge builds its models inside torch.inference_mode(): tensors made there have no version counter,
    and the engine reads version counters to notice weights the host rewrites in place (it raises
    "Inference tensors do not track version counter"). Such parameters and buffers get a twin with the same
    values, dtype and device, once, before the first engine attaches."""
    twins = {}
    with torch.inference_mode(False):
        for owner in module.modules():
            for store in (owner._parameters, owner._buffers):
                for key, tensor in list(store.items()):
                    if tensor is None or not tensor.is_inference():
                        continue
                    if id(tensor) not in twins:     # tied tensors stay tied
                        twin = tensor.clone()
                        if isinstance(tensor, torch.nn.Parameter):
                            twin = torch.nn.Parameter(twin, requires_grad=tensor.requires_grad)
                        twins[id(tensor)] = twin
                    store[key] = twins[id(tensor)]
    return len(twins)
