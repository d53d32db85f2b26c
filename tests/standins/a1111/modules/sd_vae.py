"""Stand-in for modules/sd_vae.py (A1111 v1.7-1.10). VAE "files" are entries of `vae_files`
(name -> state dict) instead of files on disk."""
import copy
from dataclasses import dataclass

from modules import devices, script_callbacks, shared

vae_files = {}
base_vae = None
loaded_vae_file = None
checkpoint_info = None
unspecified = object()


def store_base_vae(model):   # real: store_base_vae(model)
    global base_vae, checkpoint_info
    if checkpoint_info != model.sd_checkpoint_info:
        assert not loaded_vae_file, "Trying to store non-base VAE!"
        base_vae = copy.deepcopy(model.first_stage_model.state_dict())
        checkpoint_info = model.sd_checkpoint_info


def delete_base_vae():   # real: delete_base_vae()
    global base_vae, checkpoint_info
    base_vae = None
    checkpoint_info = None


def restore_base_vae(model):   # real: restore_base_vae(model)
    global loaded_vae_file
    if base_vae is not None and checkpoint_info == model.sd_checkpoint_info:
        _load_vae_dict(model, base_vae)
        loaded_vae_file = None
    delete_base_vae()


def clear_loaded_vae():   # real: clear_loaded_vae()
    global loaded_vae_file
    loaded_vae_file = None


@dataclass
class VaeResolution:   # real: class VaeResolution
    vae: str = None
    source: str = None

    def tuple(self):
        return self.vae, self.source


def resolve_vae(checkpoint_file):   # real: resolve_vae(checkpoint_file); here only the sd_vae setting
    if shared.opts.sd_vae in ("Automatic", "None"):
        return VaeResolution(None, None)
    return VaeResolution(shared.opts.sd_vae, "from settings")


def load_vae(model, vae_file=None, vae_source="from unknown source"):   # real: load_vae(model, vae_file, vae_source)
    global loaded_vae_file
    if vae_file:
        store_base_vae(model)
        _load_vae_dict(model, vae_files[vae_file])
    elif loaded_vae_file:
        restore_base_vae(model)
    loaded_vae_file = vae_file
    model.base_vae = base_vae
    model.loaded_vae_file = loaded_vae_file


def _load_vae_dict(model, vae_dict_1):   # real: _load_vae_dict(model, vae_dict_1)
    model.first_stage_model.load_state_dict(vae_dict_1)
    model.first_stage_model.to(devices.dtype_vae)


def reload_vae_weights(sd_model=None, vae_file=unspecified):   # real: reload_vae_weights(sd_model=None, vae_file=unspecified)
    if not sd_model:
        sd_model = shared.sd_model
    if vae_file == unspecified:
        vae_file, vae_source = resolve_vae(sd_model.sd_checkpoint_info.filename).tuple()
    else:
        vae_source = "from function argument"
    if loaded_vae_file == vae_file:
        return
    sd_model.to(devices.cpu)
    load_vae(sd_model, vae_file, vae_source)
    sd_model.to(devices.device)
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model
