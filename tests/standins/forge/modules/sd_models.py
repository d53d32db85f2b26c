"""Stand-in for modules/sd_models.py (Forge dfdcbab6): lazy loading in forge_model_reload."""
import gc

import torch

from backend import memory_management
from backend.loader import forge_loader
from modules import script_callbacks, shared
from tiny_models import IntegratedAutoencoderKL, vae_state_dict


class CheckpointInfo:
    def __init__(self, name, seed):
        self.filename = self.name = name
        self.state_dict = vae_state_dict(IntegratedAutoencoderKL, seed)


checkpoints = {"a.safetensors": CheckpointInfo("a.safetensors", 1), "b.safetensors": CheckpointInfo("b.safetensors", 2)}
vae_files = {}   # forge_additional_modules entries: name -> state dict


class FakeInitialModel:   # real: "a dummy class for backward compatibility when model is not load"
    def __init__(self):
        self.cond_stage_model = None
        self.chunk_length = 75


class SdModelData:   # real: class SdModelData
    def __init__(self):
        self.sd_model = FakeInitialModel()
        self.forge_loading_parameters = {}
        self.forge_hash = ''

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v):
        self.sd_model = shared.sd_model = v


model_data = SdModelData()


def refresh_model_loading_parameters():   # real: modules_forge/main_entry.py refresh_model_loading_parameters()
    model_data.forge_loading_parameters = dict(checkpoint_info=checkpoints[shared.opts.sd_model_checkpoint],
                                               additional_modules=list(shared.opts.forge_additional_modules))


@torch.inference_mode()
def forge_model_reload():   # real: forge_model_reload(), decorated @torch.inference_mode()
    current_hash = str(model_data.forge_loading_parameters)
    if model_data.forge_hash == current_hash:
        return model_data.sd_model, False
    if model_data.sd_model:
        model_data.sd_model = None
        memory_management.unload_all_models()
        memory_management.soft_empty_cache()
        gc.collect()
    checkpoint_info = model_data.forge_loading_parameters['checkpoint_info']
    additional = [vae_files[m] for m in model_data.forge_loading_parameters.get('additional_modules', [])]
    sd_model = forge_loader(checkpoint_info.state_dict, additional_state_dicts=additional)
    sd_model.sd_checkpoint_info = checkpoint_info
    model_data.set_sd_model(sd_model)
    script_callbacks.model_loaded_callback(sd_model)
    model_data.forge_hash = current_hash
    return sd_model, True


def load_model(checkpoint_info=None, already_loaded_state_dict=None):   # real: pass
    pass


def reload_model_weights(sd_model=None, info=None, forced_reload=False):   # real: pass
    pass
