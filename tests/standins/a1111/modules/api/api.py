"""Stand-in for modules/api/api.py: class Api (the options routes only; standin_webui/api.py)."""
from modules.api import models  # noqa: F401 - the real module reads models.OptionsModel in Api.__init__
from standin_webui.api import Api  # noqa: F401
