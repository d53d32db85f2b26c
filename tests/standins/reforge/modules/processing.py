"""Stand-in for modules/processing.py (reForge 3b56b268): A1111's order, reload_model_weights per batch (a cache
hit), forge_objects reset from their copies, process_before_every_sampling, no NaN retry."""
from modules import devices, sd_models, shared
from modules.sd_samplers_common import approximation_indexes, decode_first_stage, images_tensor_to_samples
from standin_webui.processing import (DecodedSamples, Processed, StableDiffusionProcessing as _Base,
                                      apply_override_settings, finish_batch, restore_override_settings)

opts = shared.opts


class StableDiffusionProcessing(_Base):
    @property
    def sd_model(self):
        return shared.sd_model


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):   # real: check_for_nans ignored
    samples = DecodedSamples()
    for x in decode_first_stage(model, batch).to(target_device):
        samples.append(x)
    return samples


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored = apply_override_settings(p, opts)
    try:
        sd_models.reload_model_weights()
        for k in p.override_settings:
            if k == 'sd_vae':
                from modules import sd_vae
                sd_vae.reload_vae_weights()
        return process_images_inner(p)
    finally:
        restore_override_settings(p, opts, stored)


def process_images_inner(p):
    if p.scripts is not None:
        p.scripts.process(p)
    if p.init_images is not None:
        image = p.init_images.to(devices.device, dtype=devices.dtype_vae)
        p.init_latent = images_tensor_to_samples(image, approximation_indexes.get(opts.sd_vae_encode_method),
                                                 p.sd_model)
    images, infotexts = [], []
    for n in range(p.n_iter):
        if shared.state.interrupted or shared.state.stopping_generation:
            break
        sd_models.reload_model_weights()
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
