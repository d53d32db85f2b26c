# Stand-in for modules/scripts.py (reForge 3b56b268; with process_before_every_sampling).
from standin_webui.scripts import AlwaysVisible, Script, ScriptRunner  # noqa: F401
