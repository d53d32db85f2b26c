"""Stand-in for modules/api/models.py: OptionsModel is built from opts.data_labels when the module is first
imported (the shared code is in standin_webui/api.py)."""
from pydantic import Field, create_model  # noqa: F401 - the real module has both as attributes

from modules.shared import opts
from standin_webui.api import options_model

OptionsModel = options_model(opts)
