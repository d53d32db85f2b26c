"""Stand-in for backend/loader.py (Forge dfdcbab6) forge_loader: builds every component, the VAE
(IntegratedAutoencoderKL) included, inside torch.inference_mode(), then the diffusion engine."""
import torch

from backend import memory_management
from backend.diffusion_engine.sd15 import StableDiffusion
from tiny_models import IntegratedAutoencoderKL


@torch.inference_mode()
def forge_loader(sd, additional_state_dicts=None):
    # real: load_huggingface_component builds the VAE in vae_dtype() under using_forge_operations, then
    # load_state_dict; a separate VAE file replaces the checkpoint's VAE keys first (replace_state_dict)
    vae_sd = dict(sd)
    for extra in additional_state_dicts or []:
        vae_sd = dict(extra)
    model = IntegratedAutoencoderKL(seed=0).to(memory_management.vae_dtype())
    model.load_state_dict(vae_sd)
    return StableDiffusion(huggingface_components={"vae": model})
