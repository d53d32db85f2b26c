"""Stand-in for backend/patcher/base.py (Forge dfdcbab6): ModelPatcher, with its cached size."""
from backend import memory_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None, **kwargs):
        self.size = size
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = current_device or offload_device

    def model_size(self):   # real: ModelPatcher.model_size caches self.size
        if self.size > 0:
            return self.size
        self.size = memory_management.module_size(self.model)
        return self.size
