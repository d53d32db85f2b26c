"""Stand-in for modules/sd_models.py (A1111 v1.10). Checkpoints are entries of `checkpoints`
(name -> CheckpointInfo with a VAE state dict) instead of files."""
from modules import devices, lowvram, script_callbacks, sd_vae, shared
from tiny_models import LatentDiffusion, LdmAutoencoderKL, vae_state_dict


class CheckpointInfo:   # real: class CheckpointInfo (filename, name, ...)
    def __init__(self, name, seed):
        self.filename = self.name = name
        self.state_dict = {f"first_stage_model.{k}": v
                           for k, v in vae_state_dict(LdmAutoencoderKL, seed).items()}


checkpoints = {"a.safetensors": CheckpointInfo("a.safetensors", 1), "b.safetensors": CheckpointInfo("b.safetensors", 2)}


class SdModelData:   # real: class SdModelData (sd_model, set_sd_model)
    def __init__(self):
        self.sd_model = None

    def set_sd_model(self, v):
        self.sd_model = shared.sd_model = v


model_data = SdModelData()


def load_model_weights(model, checkpoint_info, state_dict, timer):
    # real: load_model_weights(model, checkpoint_info: CheckpointInfo, state_dict, timer): loads the state dict
    # into the model (in place); model.float() with --no-half, else model.half() with the VAE taken out of the
    # model only under --no-half-vae; casts the VAE to devices.dtype_vae, then loads the VAE chosen for it.
    model.load_state_dict(state_dict, strict=False)
    if shared.cmd_opts.no_half:
        model.float()
    else:
        vae = model.first_stage_model
        if shared.cmd_opts.no_half_vae:
            model.first_stage_model = None
        model.half()
        model.first_stage_model = vae
    model.first_stage_model.to(devices.dtype_vae)
    model.sd_checkpoint_info = checkpoint_info
    sd_vae.delete_base_vae()
    sd_vae.clear_loaded_vae()
    vae_file, vae_source = sd_vae.resolve_vae(checkpoint_info.filename).tuple()
    sd_vae.load_vae(model, vae_file, vae_source)


def send_model_to_device(m):   # real: send_model_to_device(m): lowvram.apply(m), else m.to(shared.device)
    lowvram.apply(m)
    if not m.lowvram:
        m.to(devices.device)


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    # real: load_model(...): a new model, load_model_weights, set_sd_model, model_loaded_callback
    checkpoint_info = checkpoint_info or checkpoints["a.safetensors"]
    sd_model = LatentDiffusion(seed=0)
    load_model_weights(sd_model, checkpoint_info, checkpoint_info.state_dict, None)
    send_model_to_device(sd_model)
    model_data.set_sd_model(sd_model)
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    # real: reload_model_weights(sd_model=None, info=None, forced_reload=False): returns early for the loaded
    # checkpoint; else (same config) load_model_weights into the same model, model_loaded_callback in finally
    sd_model = sd_model or model_data.sd_model
    info = info or checkpoints[shared.opts.sd_model_checkpoint]
    if sd_model is None:
        return load_model(info)
    if sd_model.sd_checkpoint_info is info and not forced_reload:
        return sd_model
    try:
        load_model_weights(sd_model, info, info.state_dict, None)
    finally:
        script_callbacks.model_loaded_callback(sd_model)
    return sd_model
