"""What every host adapter does with the VAE the host has loaded: attach an engine per the current
options, keep the host's own dtype record consistent with ours, step aside while the host loads weights,
and take everything off again ("off means off").

A host module (a1111, forge, reforge) says where the VAE is (`target_of`), which host function loads
weights into it (`install_hooks`), which flags of the host decide its dtype (`host_flags`).
"""
import contextlib
import logging
import weakref

import torch

from ..engine import VaeEngine, engine_of, warn_once
from ..options import DEFAULTS
from .holds import ValueHold
from .patches import Patches

log = logging.getLogger("vae_precision")


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
        self._listener = None
        self._loading = 0
        self.read_settings = None               # callable -> VaeOptions, for loads outside a render

    # ----- host specifics -----
    def target_of(self, sd_model):
        raise NotImplementedError

    def current_model(self):
        """The loaded model, without making the host load one."""
        return None

    def host_flags(self):
        """The host's own flags/settings that would pick the VAE dtype, as shown to users."""
        return []

    def install_hooks(self):
        pass

    def after_release(self, module):
        """Host-specific clean-up once the module has the host's weights back."""

    # ----- lifetime -----
    def install(self):
        self.install_hooks()
        return self

    def uninstall(self):
        self.patches.restore_all()
        self.disable_all()
        self._listener = None

    def hold(self, owner, attr, on_set=None):
        hold = self._holds.get(owner)
        if hold is None:
            hold = self._holds[owner] = ValueHold(owner, attr, on_set)
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
        target = self.target_of(sd_model)
        if target is None:
            return None
        if not self.options.enabled:
            self.disable_all()
            return None
        engine = self.engine_for(target.module)
        if engine is None:
            give_version_counters(target.module)
            engine = VaeEngine(target.module, self.options, on_call=self._dispatch).attach()
            self._engines.add(engine)
        engine.set_options(self.options)
        engine.on_call = self._dispatch
        device = torch.device("cpu") if self.options.offload == "cpu" else target.device
        if engine.precision_for(device) is None:   # "host default": the host's weights, the host's dtype
            self._release(target, engine)
            return engine
        # Cast now rather than at the first call: the host may recast the module to its own record of
        # the dtype before then (A1111's encode path), and the originals must be saved before that.
        precision = engine.prepare(device)
        target.hold.hold(precision.dtype)
        flags = self.host_flags()
        if flags:
            warn_once(f"the VAE dtype is chosen by VAE Precision's dtype setting, not by {', '.join(flags)}; "
                     f"set it to 'host default' to let the web UI decide")
        return engine

    def _release(self, target, engine):
        target.hold.release()
        if engine is not None:       # a module we never touched is left entirely to the host
            engine.release_weights()
            self.after_release(target.module)

    def disable_all(self):
        """Off means off: every engine detached, every host dtype record given back."""
        for hold in list(self._holds.values()):
            hold.release()
        for engine in list(self._engines):
            engine.detach()
            self._engines.discard(engine)
            self.after_release(engine.module)

    # ----- host weight loads -----
    @contextlib.contextmanager
    def host_loading(self, model=None):
        """Around a host function that writes weights into the VAE: the host's weights and dtype go back
        first (so it loads into what it expects, and its backups are its own), then we apply again."""
        self._loading += 1
        try:
            if self._loading == 1:
                self._step_aside(model if model is not None else self.current_model())
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

    def _step_aside(self, model):
        for hold in list(self._holds.values()):
            hold.release()
        target = self.target_of(model) if model is not None else None
        if target is not None:
            self._release(target, self.engine_for(target.module))

    def wrap_host_load(self, owner, name, model_arg):
        """Wraps a host function that loads VAE weights; `model_arg` names its model parameter (also
        taken from the first positional argument)."""
        def around(original, *args, **kwargs):
            model = kwargs.get(model_arg, args[0] if args else None)
            with self.host_loading(model):
                return original(*args, **kwargs)
        return self.patches.wrap(owner, name, around)


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
