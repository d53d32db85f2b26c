"""What modules/api/models.py and modules/api/api.py do with the settings (the same in A1111 v1.10, Forge and
reForge), with real pydantic; each host's `modules/api` stand-in imports it."""
from typing import Any, Optional

from pydantic import Field, create_model


def options_model(opts):
    # real: modules/api/models.py, at import: one field per opts.data_labels entry, then
    # OptionsModel = create_model("Options", **fields)
    fields = {}
    for key, metadata in opts.data_labels.items():
        opt_type = opts.typemap.get(type(metadata.default), type(metadata.default)) if metadata.default else Any
        fields[key] = (Optional[opt_type], Field(default=metadata.default, description=metadata.label))
    return create_model("Options", **fields)


class Api:
    """real: modules/api/api.py class Api; __init__ adds GET /sdapi/v1/options with
    response_model=models.OptionsModel and POST /sdapi/v1/options (set_config)."""

    def __init__(self):
        from modules.api import models
        self.options_response_model = models.OptionsModel

    def get_config(self):
        # real (A1111, reForge): {key: opts.data.get(key, default)} for every key in opts.data;
        # Forge: modules/sysinfo.py get_config() -> shared.opts.data
        from modules import shared
        return dict(shared.opts.data)

    def set_config(self, req):
        # real: shared.opts.set(k, v, is_api=True) for each item, then opts.save(...)
        from modules import shared
        for key, value in req.items():
            shared.opts.set(key, value, is_api=True)

    def get_options(self):
        """What a client of GET /sdapi/v1/options receives: FastAPI validates get_config()'s dict with the
        route's response model and serializes the model (fastapi/routing.py serialize_response)."""
        model = self.options_response_model
        data = self.get_config()
        if hasattr(model, "model_validate"):          # pydantic 2 (Forge)
            return model.model_validate(data).model_dump()
        return model.parse_obj(data).dict()            # pydantic 1 (A1111, reForge)
