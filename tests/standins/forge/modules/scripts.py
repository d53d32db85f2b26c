# Stand-in for modules/scripts.py (Forge dfdcbab6; adds process_before_every_sampling).
from standin_webui.scripts import AlwaysVisible, Script, ScriptRunner  # noqa: F401
