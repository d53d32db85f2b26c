"""Stand-in for ldm_patched/modules/model_patcher.py (reForge 3b56b268): ModelPatcher with its cached size."""
from ldm_patched.modules import model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.model_options = {"transformer_options": {}}

    def model_size(self):   # real: ModelPatcher.model_size caches self.size
        if self.size > 0:
            return self.size
        self.size = model_management.module_size(self.model)
        return self.size
