"""Stand-in for modules/lowvram.py (A1111 v1.10): --medvram/--lowvram keep the VAE off the GPU and shadow
first_stage_model.encode/decode on the instance with wrappers that send it to the GPU first."""
from modules import devices, shared

module_in_gpu = None
sent_to_gpu = []   # stand-in only: what send_me_to_gpu moved, for tests


def is_needed(sd_model):   # real: is_needed(sd_model)
    return shared.cmd_opts.lowvram or shared.cmd_opts.medvram


def apply(sd_model):   # real: apply(sd_model)
    if is_needed(sd_model):
        setup_for_low_vram(sd_model, not shared.cmd_opts.lowvram)
    else:
        sd_model.lowvram = False


def setup_for_low_vram(sd_model, use_medvram):   # real: setup_for_low_vram(sd_model, use_medvram)
    sd_model.lowvram = True

    def send_me_to_gpu(module, _):
        global module_in_gpu
        if module_in_gpu is not module:
            module.to(devices.device)
            module_in_gpu = module
        sent_to_gpu.append(module)

    first_stage_model = sd_model.first_stage_model
    first_stage_model_encode = sd_model.first_stage_model.encode
    first_stage_model_decode = sd_model.first_stage_model.decode

    def first_stage_model_encode_wrap(x):
        send_me_to_gpu(first_stage_model, None)
        return first_stage_model_encode(x)

    def first_stage_model_decode_wrap(z):
        send_me_to_gpu(first_stage_model, None)
        return first_stage_model_decode(z)

    sd_model.first_stage_model.encode = first_stage_model_encode_wrap
    sd_model.first_stage_model.decode = first_stage_model_decode_wrap


def is_enabled(sd_model):
    return sd_model.lowvram
