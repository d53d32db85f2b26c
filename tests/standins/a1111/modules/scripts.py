# Stand-in for modules/scripts.py (A1111 v1.10).
from standin_webui.scripts import AlwaysVisible, Script, ScriptRunner  # noqa: F401
