"""Forge (lllyasviel/stable-diffusion-webui-forge main, the `backend` package).

Where the VAE is: `sd_model.forge_objects.vae` (`backend.patcher.vae.VAE`), module
`vae.first_stage_model` (`IntegratedAutoencoderKL`); `decode_first_stage` / `encode_first_stage` of the
diffusion engine call `vae.decode` / `vae.encode`, which call `first_stage_model.decode` / `.encode`.
`sd_model.first_stage_model` is None.

The host never writes weights into a loaded VAE: `forge_model_reload` builds a new model (and VAE) whenever
the checkpoint or the additional modules change, at generation time, then fires `model_loaded`. Nothing
to wrap; the new VAE is attached from the callback (and checked again in `process`).

Its dtype record: `vae.vae_dtype`, read by every decode/encode to cast inputs and size memory; the
patcher caches the module's byte size (`ModelPatcher.size`), which is dropped when the dtype changes.
"""
import torch

from .adapter import HostAdapter, VaeTarget

VAE_FLAGS = ("fp16", "bf16", "fp32", "cpu")


def _forget_size(vae):
    patcher = getattr(vae, "patcher", None)
    if patcher is not None and hasattr(patcher, "size"):
        patcher.size = 0      # ModelPatcher.model_size() recomputes it at the next load


class ForgeFamilyAdapter(HostAdapter):
    """Forge and reForge hold the VAE the same way (`forge_objects.vae`, `vae.vae_dtype`)."""

    def target_of(self, sd_model):
        vae = getattr(getattr(sd_model, "forge_objects", None), "vae", None)
        module = getattr(vae, "first_stage_model", None)
        if module is None or not hasattr(module, "decode"):
            return None      # Forge's FakeInitialModel before the first generation, or a model without VAE
        device = torch.device(getattr(vae, "device", None) or "cpu")
        return VaeTarget(module, device, self.hold(vae, "vae_dtype", on_set=_forget_size))

    def current_model(self):
        from modules import sd_models
        return sd_models.model_data.sd_model

    @staticmethod
    def _vae_flags(args):
        return [f"--vae-in-{kind}" for kind in VAE_FLAGS if getattr(args, f"vae_in_{kind}", False)]


class ForgeAdapter(ForgeFamilyAdapter):
    name = "forge"

    def host_flags(self):
        from backend.args import args
        return self._vae_flags(args)
