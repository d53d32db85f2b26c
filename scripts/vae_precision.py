"""VAE Precision: entry point the web UI loads (AUTOMATIC1111, Forge, reForge). The logic is in lib_vaeprec."""
from modules import script_callbacks, scripts

from lib_vaeprec.hosts import runtime
from lib_vaeprec.hosts.script import ScriptHooks


class VaePrecisionScript(ScriptHooks, scripts.Script):
    """Always-visible accordion in txt2img/img2img; applies the VAE options around each render."""


runtime.register(script_callbacks)
