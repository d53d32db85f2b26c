# Stand-in for modules/script_callbacks.py (Forge dfdcbab6; as A1111 v1.10).
from standin_webui.script_callbacks import *  # noqa: F401,F403
from standin_webui.script_callbacks import registered  # noqa: F401
