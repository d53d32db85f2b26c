"""Stand-in for modules/processing.py (Forge dfdcbab6): the model is (re)loaded lazily in
manage_model_and_prompt_cache and at every batch; forge_objects are reset from their copies per batch and
before sampling; process_before_every_sampling; everything from p.init on under torch.inference_mode()."""
import torch

from modules import devices, sd_models, shared
from modules.sd_samplers_common import approximation_indexes, decode_first_stage, images_tensor_to_samples
from standin_webui.processing import (DecodedSamples, Processed, StableDiffusionProcessing as _Base,
                                      apply_override_settings, finish_batch, restore_override_settings)

opts = shared.opts


class StableDiffusionProcessing(_Base):
    sd_model = None   # real: a field, set by manage_model_and_prompt_cache


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):   # real: no NaN check
    samples = DecodedSamples()
    for x in decode_first_stage(model, batch).to(target_device):
        samples.append(x)
    return samples


def manage_model_and_prompt_cache(p):   # real: manage_model_and_prompt_cache(p)
    p.sd_model, just_reloaded = sd_models.forge_model_reload()


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored = apply_override_settings(p, opts)
    try:
        sd_models.refresh_model_loading_parameters()   # real: the UI's checkpoint/module change does this
        manage_model_and_prompt_cache(p)
        return process_images_inner(p)
    finally:
        restore_override_settings(p, opts, stored)


def process_images_inner(p):
    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    with torch.inference_mode():
        if p.init_images is not None:
            image = p.init_images.to(devices.device, dtype=devices.dtype_vae)
            p.init_latent = images_tensor_to_samples(image, approximation_indexes.get(opts.sd_vae_encode_method),
                                                     p.sd_model)
        for n in range(p.n_iter):
            if shared.state.interrupted or shared.state.stopping_generation:
                break
            p.sd_model, just_reloaded = sd_models.forge_model_reload()
            p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()
            p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
            if p.scripts is not None:
                p.scripts.process_before_every_sampling(p, x=None, noise=None, c=None, uc=None)
            samples = p.sample(n)
            decoded = decode_latent_batch(p.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
            finish_batch(p, decoded, n, images, infotexts)
    res = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
