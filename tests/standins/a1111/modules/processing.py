"""Stand-in for modules/processing.py (A1111 v1.10): process_images / process_images_inner in the real order
of the script hooks, the img2img encode in init, decode_latent_batch with the host's NaN fallback."""
import torch

from modules import devices, sd_models, shared
from modules.sd_samplers_common import approximation_indexes, decode_first_stage, images_tensor_to_samples
from standin_webui.processing import (DecodedSamples, Processed, StableDiffusionProcessing as _Base,
                                      apply_override_settings, finish_batch, restore_override_settings)

opts = shared.opts


class StableDiffusionProcessing(_Base):
    @property
    def sd_model(self):   # real: the sd_model field's getter returns shared.sd_model
        return shared.sd_model


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    # real: decode_latent_batch: one image at a time; on NaN, auto_vae_precision* change devices.dtype_vae,
    # recast the VAE and retry
    samples = DecodedSamples()
    for i in range(batch.shape[0]):
        sample = decode_first_stage(model, batch[i:i + 1])[0]
        if check_for_nans:
            try:
                devices.test_for_nans(sample, "vae")
            except devices.NansException:
                if shared.opts.auto_vae_precision_bfloat16:
                    autofix_dtype = torch.bfloat16
                elif shared.opts.auto_vae_precision:
                    autofix_dtype = torch.float32
                else:
                    raise
                if devices.dtype_vae == autofix_dtype:
                    raise
                devices.dtype_vae = autofix_dtype
                model.first_stage_model.to(devices.dtype_vae)
                batch = batch.to(devices.dtype_vae)
                sample = decode_first_stage(model, batch[i:i + 1])[0]
        if target_device is not None:
            sample = sample.to(target_device)
        samples.append(sample)
    return samples


def process_images(p):
    # real: before_process, then override_settings (opts.set(..., run_callbacks=False)), then the render,
    # then the stored values put back
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored = apply_override_settings(p, opts)
    try:
        sd_models.reload_model_weights()
        return process_images_inner(p)
    finally:
        restore_override_settings(p, opts, stored)


def process_images_inner(p):
    if p.scripts is not None:
        p.scripts.process(p)
    if p.init_images is not None:   # real: StableDiffusionProcessingImg2Img.init
        image = p.init_images.to(shared.device if hasattr(shared, "device") else devices.device,
                                 dtype=devices.dtype_vae)
        p.init_latent = images_tensor_to_samples(image, approximation_indexes.get(opts.sd_vae_encode_method),
                                                 p.sd_model)
    images, infotexts = [], []
    for n in range(p.n_iter):
        if shared.state.interrupted or shared.state.stopping_generation:
            break
        sd_models.reload_model_weights()   # real: "model can be changed for example by refiner"
        samples = p.sample(n)
        decoded = decode_latent_batch(p.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
        finish_batch(p, decoded, n, images, infotexts)
    res = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
