"""Stand-in for modules/sd_models.py (reForge 3b56b268): load_model keeps up to sd_checkpoints_limit models;
a cached one is made current without any callback."""
from modules import script_callbacks, sd_vae, shared
from modules_forge import forge_loader
from tiny_models import LdmPatchedAutoencoderKL, vae_state_dict


class CheckpointInfo:
    def __init__(self, name, seed):
        self.filename = self.name = name
        self.state_dict = vae_state_dict(LdmPatchedAutoencoderKL, seed)


checkpoints = {"a.safetensors": CheckpointInfo("a.safetensors", 1), "b.safetensors": CheckpointInfo("b.safetensors", 2)}


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = shared.sd_model = v
        if not already_loaded and v not in self.loaded_sd_models:
            self.loaded_sd_models.insert(0, v)
            del self.loaded_sd_models[shared.opts.sd_checkpoints_limit:]


model_data = SdModelData()


def load_model(checkpoint_info=None, already_loaded_state_dict=None, forced_reload=False):
    checkpoint_info = checkpoint_info or checkpoints[shared.opts.sd_model_checkpoint]
    for loaded_model in model_data.loaded_sd_models:   # real: cache hit returns early, no model_loaded_callback
        if loaded_model.sd_checkpoint_info is checkpoint_info and not forced_reload:
            model_data.set_sd_model(loaded_model, already_loaded=True)
            return loaded_model
    sd_model = forge_loader.load_model_for_a1111(timer=None, checkpoint_info=checkpoint_info,
                                                 state_dict=checkpoint_info.state_dict)
    sd_model.sd_checkpoint_info = checkpoint_info
    model_data.set_sd_model(sd_model)
    sd_vae.delete_base_vae()
    sd_vae.clear_loaded_vae()
    vae_file, vae_source = sd_vae.resolve_vae(checkpoint_info.filename).tuple()
    sd_vae.load_vae(sd_model, vae_file, vae_source)
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):   # real: return load_model(info, ...)
    return load_model(info, forced_reload=forced_reload)


def load_model_weights(model, checkpoint_info, state_dict, timer):   # real: a no-op stub
    return
