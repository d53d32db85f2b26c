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
Its load-time choice: `backend/memory_management.py` `vae_dtype()`, which `backend/loader.py`
`load_huggingface_component` builds the module in (so `load_state_dict` rounds to it) and
`backend/patcher/vae.py` `VAE.__init__` casts the module to and records as `vae_dtype`.
"""
import torch

from .adapter import HostAdapter, VaeTarget

VAE_DTYPE_FLAGS = ("fp16", "bf16", "fp32")     # --vae-in-cpu picks the device, which the extension leaves alone


def _forget_size(vae):
    patcher = getattr(vae, "patcher", None)
    if patcher is not None and hasattr(patcher, "size"):
        patcher.size = 0      # ModelPatcher.model_size() recomputes it at the next load


class ForgeFamilyAdapter(HostAdapter):
    """Forge and reForge hold the VAE the same way (`forge_objects.vae`, `vae.vae_dtype`), and choose the
    dtype to load it at the same way (`vae_dtype(device=None, allowed_dtypes=[])` of their memory manager)."""

    def memory_manager(self):
        """The host module whose `vae_dtype` chooses the VAE's load dtype."""
        raise NotImplementedError

    def host_vae_dtype(self, vae):
        """The dtype the host itself chose for `vae` (what `VAE.__init__` asked `vae_dtype` for)."""
        raise NotImplementedError

    def install_hooks(self):
        manager = self.memory_manager()
        self._host_vae_dtype = manager.vae_dtype
        self.patches.wrap(manager, "vae_dtype",
                          lambda original, *args, **kwargs: self.load_dtype(original(*args, **kwargs)))

    def target_of(self, sd_model):
        vae = getattr(getattr(sd_model, "forge_objects", None), "vae", None)
        module = getattr(vae, "first_stage_model", None)
        if module is None or not hasattr(module, "decode"):
            return None      # Forge's FakeInitialModel before the first generation, or a model without VAE
        device = torch.device(getattr(vae, "device", None) or "cpu")
        # `vae_dtype` may hold what our hook on the load choice answered: the host's own value is asked anew.
        hold = self.hold(vae, "vae_dtype", on_set=_forget_size, host_choice=self.host_vae_dtype)
        return VaeTarget(module, device, hold)

    def current_model(self):
        from modules import sd_models
        return sd_models.model_data.sd_model

    @staticmethod
    def _vae_flags(args):
        return [(f"--vae-in-{kind}", True) for kind in VAE_DTYPE_FLAGS if getattr(args, f"vae_in_{kind}", False)]


class ForgeAdapter(ForgeFamilyAdapter):
    name = "forge"

    def memory_manager(self):
        from backend import memory_management
        return memory_management

    def host_vae_dtype(self, vae):
        return self._host_vae_dtype()       # backend/patcher/vae.py VAE.__init__: vae_dtype()

    def host_choices(self):
        from backend.args import args
        return self._vae_flags(args)
