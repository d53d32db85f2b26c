"""Putting one web UI's stand-in on sys.path for a test, loading the extension into it the way the web UI does,
and taking it all away afterwards. Import the fixtures into a test module:

    from standins.fixtures import a1111, forge, reforge
"""
import contextlib
import importlib
import importlib.util
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ENTRY_POINT = os.path.join(REPO, "scripts", "vae_precision.py")
HOST_PACKAGES = ("modules", "backend", "ldm_patched", "modules_forge", "gradio", "standin_webui", "tiny_models")

if REPO not in sys.path:
    sys.path.insert(0, REPO)

from lib_vaeprec import engine as engine_module  # noqa: E402
from lib_vaeprec.hosts import runtime, ui  # noqa: E402


def _clear_host_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in HOST_PACKAGES:
            del sys.modules[name]


class HostEnv:
    def __init__(self, name):
        self.name = name
        self.entry = None
        self.runners = {}

    def mod(self, dotted):
        return importlib.import_module(dotted)

    # ----- the web UI starting up -----
    def load_extension(self):
        """real: modules/script_loading.py load_module(path): exec the script file as a fresh module."""
        spec = importlib.util.spec_from_file_location("vae_precision.py", ENTRY_POINT)
        self.entry = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.entry)
        scripts = self.mod("modules.scripts")
        self.script_classes = [c for c in vars(self.entry).values()
                               if isinstance(c, type) and issubclass(c, scripts.Script)]
        return self.entry

    def start(self, load_model=True):
        """Extension loaded, settings registered, txt2img and img2img UIs built, the model loaded."""
        self.load_extension()
        self.mod("modules.script_callbacks").ui_settings_callback()
        scripts = self.mod("modules.scripts")
        for is_img2img in (False, True):
            self.runners[is_img2img] = scripts.ScriptRunner([self.script_classes[0]()], is_img2img=is_img2img)
        if load_model and self.name in ("a1111", "reforge"):
            self.mod("modules.sd_models").load_model()
        return self

    # ----- state -----
    @property
    def opts(self):
        return self.mod("modules.shared").opts

    @property
    def runtime(self):
        return runtime.get()

    @property
    def adapter(self):
        return runtime.get().adapter

    def model(self):
        return self.mod("modules.sd_models").model_data.sd_model

    def vae_module(self, model=None):
        model = model if model is not None else self.model()
        if self.name == "a1111":
            return model.first_stage_model
        return model.forge_objects.vae.first_stage_model

    def host_dtype_record(self, model=None):
        """The host's own record of the VAE dtype (A1111 devices.dtype_vae, Forge/reForge vae.vae_dtype)."""
        if self.name == "a1111":
            return self.mod("modules.devices").dtype_vae
        return (model if model is not None else self.model()).forge_objects.vae.vae_dtype

    # ----- rendering -----
    def args(self, img2img=False, **values):
        """Script args: the UI defaults, with the named accordion values (opening the accordion)."""
        runner = self.runners[img2img]
        args = runner.default_args()
        if values and "active" not in values:
            values["active"] = True
        script = runner.alwayson_scripts[0]
        for name, value in values.items():
            args[script.args_from + ui.ARGS.index(name)] = value
        return args

    def new_p(self, img2img=False, args=None, **kwargs):
        processing = self.mod("modules.processing")
        if img2img and "init_images" not in kwargs:
            kwargs["init_images"] = torch.rand(kwargs.get("batch_size", 1), 3, 16, 16,
                                               generator=torch.Generator().manual_seed(3))
        p = processing.StableDiffusionProcessing(scripts=self.runners[img2img],
                                                 script_args=args if args is not None else self.args(img2img),
                                                 **kwargs)
        return p

    def render(self, img2img=False, args=None, **kwargs):
        p = self.new_p(img2img=img2img, args=args, **kwargs)
        return p, self.mod("modules.processing").process_images(p)

    def infotext(self, text):
        return self.mod("standin_webui.processing").parse_generation_parameters(text)

    def errors(self):
        return self.mod("standin_webui").errors_reported


@contextlib.contextmanager
def host_env(name):
    saved_path = list(sys.path)
    _clear_host_modules()
    sys.path[:0] = [os.path.join(HERE, name), os.path.join(HERE, "common"), HERE]
    engine_module._warned.clear()
    runtime.forget()
    env = HostEnv(name)
    try:
        yield env
        assert env.errors() == [], f"the web UI reported errors: {env.errors()}"
    finally:
        current = runtime._current
        if current is not None:
            current.on_script_unloaded()
        runtime.forget()
        _clear_host_modules()
        sys.path[:] = saved_path


@pytest.fixture
def a1111():
    with host_env("a1111") as env:
        yield env


@pytest.fixture
def forge():
    with host_env("forge") as env:
        yield env


@pytest.fixture
def reforge():
    with host_env("reforge") as env:
        yield env


# ----- checks shared by the host tests -----
def snapshot(module):
    """Every parameter and buffer, bit for bit, with dtype and device."""
    return {name: (t.detach().clone(), t.dtype, t.device)
            for name, t in list(module.named_parameters()) + list(module.named_buffers())}


def assert_untouched(module, snap):
    """Off means off: no wrapper on the instance, every tensor as the host had it."""
    assert "decode" not in module.__dict__ and "encode" not in module.__dict__
    now = dict(list(module.named_parameters()) + list(module.named_buffers()))
    assert now.keys() == snap.keys()
    for name, (tensor, dtype, device) in snap.items():
        assert now[name].dtype == dtype, name
        assert now[name].device == device, name
        assert torch.equal(now[name], tensor), name


def dtypes_of(module):
    return {t.dtype for t in module.parameters()}
