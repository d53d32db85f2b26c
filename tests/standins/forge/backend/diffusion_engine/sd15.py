"""Stand-in for backend/diffusion_engine/sd15.py (Forge dfdcbab6) class StableDiffusion."""
import torch

from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.patcher.vae import VAE


class StableDiffusion(ForgeDiffusionEngine):
    def __init__(self, estimated_config=None, huggingface_components=None):
        super().__init__(estimated_config, huggingface_components)
        vae = VAE(model=huggingface_components['vae'])
        self.forge_objects = ForgeObjects(unet=None, clip=None, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd1 = True

    @torch.inference_mode()
    def encode_first_stage(self, x):
        sample = self.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
        sample = self.forge_objects.vae.first_stage_model.process_in(sample)
        return sample.to(x)

    @torch.inference_mode()
    def decode_first_stage(self, x):
        sample = self.forge_objects.vae.first_stage_model.process_out(x)
        sample = self.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)
