"""Stand-in for modules/sd_vae.py (reForge 3b56b268). VAE "files" are entries of `vae_files`."""
import copy
from dataclasses import dataclass

from ldm_patched.modules import sd as ldm_sd
from modules import script_callbacks, shared

vae_files = {}
base_vae = None
loaded_vae_file = None
checkpoint_info = None
unspecified = object()


def store_base_vae(model):
    global base_vae, checkpoint_info
    if checkpoint_info != model.sd_checkpoint_info:
        base_vae = copy.deepcopy(model.forge_objects.vae.first_stage_model.state_dict())
        checkpoint_info = model.sd_checkpoint_info


def delete_base_vae():
    global base_vae, checkpoint_info
    base_vae = None
    checkpoint_info = None


def restore_base_vae(model):
    global loaded_vae_file
    if base_vae is not None and checkpoint_info == model.sd_checkpoint_info:
        _load_vae_dict(model, base_vae)
        loaded_vae_file = None
    delete_base_vae()


def clear_loaded_vae():
    global loaded_vae_file
    loaded_vae_file = None


@dataclass
class VaeResolution:
    vae: str = None
    source: str = None

    def tuple(self):
        return self.vae, self.source


def resolve_vae(checkpoint_file):   # here only the sd_vae setting
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


def _load_vae_dict(model, vae_dict_1):
    # real: strict load into the existing module (dtype kept); on mismatch a new VAE replaces it everywhere
    forge_vae = model.forge_objects.vae
    target_first_stage = forge_vae.first_stage_model
    try:
        target_first_stage.load_state_dict(vae_dict_1, strict=True)
        forge_vae.first_stage_model = target_first_stage
        model.first_stage_model = target_first_stage
    except RuntimeError:
        rebuilt = ldm_sd.VAE(sd=vae_dict_1, device=getattr(forge_vae, "device", None))
        model.forge_objects.vae = rebuilt
        model.forge_objects_original.vae = rebuilt
        model.forge_objects_after_applying_lora.vae = rebuilt
        model.first_stage_model = rebuilt.first_stage_model


def reload_vae_weights(sd_model=None, vae_file=unspecified):   # real: reload_vae_weights(sd_model=None, vae_file=unspecified)
    if not sd_model:
        sd_model = shared.sd_model
    if vae_file == unspecified:
        vae_file, vae_source = resolve_vae(sd_model.sd_checkpoint_info.filename).tuple()
    else:
        vae_source = "from function argument"
    if loaded_vae_file == vae_file:
        return
    load_vae(sd_model, vae_file, vae_source)
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model
