"""The one live integration per web UI process: the host adapter, the web UI callbacks, and what each
script hook does. `get()` makes it on first use (installing the host hooks); unloading the script (UI reload)
uninstalls it and the next load makes a fresh one.
"""
import logging

from ..options import merge
from . import detect, session as sessions, settings, ui
from .a1111 import A1111Adapter
from .forge import ForgeAdapter
from .reforge import ReForgeAdapter

log = logging.getLogger("vae_precision")
ADAPTERS = {detect.A1111: A1111Adapter, detect.FORGE: ForgeAdapter, detect.REFORGE: ReForgeAdapter}
CALLBACK_NAME = "vae_precision"

_current = None


def get():
    global _current
    if _current is None:
        _current = Runtime(ADAPTERS[detect.detect()]()).start()
    return _current


def forget():
    global _current
    _current = None


def register(script_callbacks):
    """Adds the settings and registers the web UI callbacks (called by scripts/vae_precision.py when the
    host loads it)."""
    rt = get()
    settings.register()
    settings.expose_over_api(rt.adapter.patches)
    for register_fn, callback in ((script_callbacks.on_model_loaded, rt.on_model_loaded),
                                  (script_callbacks.on_script_unloaded, rt.on_script_unloaded)):
        try:
            register_fn(callback, name=CALLBACK_NAME)
        except TypeError:    # callbacks without names (A1111 before 1.8)
            register_fn(callback)
    return rt


class Runtime:
    def __init__(self, adapter):
        self.adapter = adapter
        self.closed = False

    def start(self):
        self.adapter.read_settings = settings.read
        self.adapter.install()
        model = self.adapter.current_model()
        if model is not None:      # UI reload with a model already loaded: no model_loaded follows
            try:
                self.adapter.apply(model)
            except Exception:  # noqa: BLE001 - the next render applies again
                log.exception("VAE Precision: could not attach to the loaded model")
        return self

    # ----- web UI callbacks -----
    def on_model_loaded(self, sd_model):
        if not self.closed:
            self.adapter.apply(sd_model)

    def on_script_unloaded(self):
        if self.closed:
            return
        self.closed = True
        self.adapter.uninstall()
        if _current is self:
            forget()

    # ----- script hooks -----
    def before_process(self, p):
        # Runs before the web UI applies override_settings: the settings to go back to after the render.
        session = sessions.of(p)
        if settings.touched_by(getattr(p, "override_settings", None)):
            session.baseline = settings.read()

    def process(self, p, args):
        """The accordion > override_settings > settings, each bad value replaced by the next level's; applied to
        the model the render uses. Also the check for a VAE the host swapped without telling (reForge's cached
        checkpoints)."""
        session = sessions.of(p)
        overridden = settings.overridden_keys(getattr(p, "override_settings", None))
        if session.baseline is None:          # no override_settings of ours: the settings as they are
            session.baseline = render_settings = settings.read()
        else:
            render_settings = settings.read(stored=session.baseline, overridden=overridden)
        # The script's arguments come from the accordion in the UI, or a request's alwayson_scripts
        # (the web UIs' API sets p.is_api, modules/api/api.py text2imgapi/img2imgapi).
        source = "alwayson_scripts" if getattr(p, "is_api", False) else "accordion"
        session.options = merge(render_settings, ui.overrides_from_args(args), source=source,
                                base_source=settings.levels(overridden=overridden))
        self.adapter.listen(session.record)
        self.adapter.apply(p.sd_model, session.options)

    def before_sampling(self, p):
        # Forge reloads the model lazily inside the render, reForge may swap to a cached one: check again.
        self.adapter.apply(p.sd_model)

    def postprocess_batch(self, p):
        sessions.of(p).write_infotext(p)
        self.adapter.apply(p.sd_model)    # e.g. 'auto' learned this VAE overflows fp16: host record follows

    def postprocess(self, p):
        session = sessions.of(p, create=False)
        self.adapter.listen(None)
        if session is not None and session.baseline is not None:
            self.adapter.apply(self.adapter.current_model(), session.baseline)
