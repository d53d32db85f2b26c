# Stand-in for modules/options.py (Forge dfdcbab6; as A1111 v1.10).
from standin_webui.options import OptionInfo, Options  # noqa: F401
