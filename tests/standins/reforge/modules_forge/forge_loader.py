"""Stand-in for modules_forge/forge_loader.py (reForge 3b56b268): ForgeSD and load_model_for_a1111, which sets
forge_objects (and its two copies), first_stage_model, and the decode/encode_first_stage closures."""
import contextlib

import torch

from ldm_patched.modules.latent_formats import SD15
from ldm_patched.modules.sd import VAE


class ForgeSD:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeSD(self.unet, self.clip, self.vae, self.clipvision)


class FakeSdModel:
    """The A1111 model object load_model_for_a1111 instantiates (with FakeObject unet/first stage)."""


@torch.no_grad()
def load_model_for_a1111(timer, checkpoint_info=None, state_dict=None):
    sd_model = FakeSdModel()
    forge_objects = ForgeSD(unet=None, clip=None, vae=VAE(sd=state_dict), clipvision=None)
    latent_format = SD15()
    sd_model.first_stage_model = forge_objects.vae.first_stage_model
    sd_model.forge_objects = forge_objects
    sd_model.forge_objects_original = forge_objects.shallow_copy()
    sd_model.forge_objects_after_applying_lora = forge_objects.shallow_copy()

    @torch.inference_mode()
    def patched_decode_first_stage(x):
        sample = latent_format.process_out(x)
        sample = sd_model.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)

    @torch.inference_mode()
    def patched_encode_first_stage(x):
        sample = sd_model.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
        sample = latent_format.process_in(sample)
        return sample.to(x)

    sd_model.ema_scope = lambda *args, **kwargs: contextlib.nullcontext()
    sd_model.get_first_stage_encoding = lambda x: x
    sd_model.decode_first_stage = patched_decode_first_stage
    sd_model.encode_first_stage = patched_encode_first_stage
    return sd_model
