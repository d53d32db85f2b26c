"""reForge (Panchovix/stable-diffusion-webui-reForge main, the `ldm_patched` backend).

Where the VAE is: as in Forge, `sd_model.forge_objects.vae` (`ldm_patched.modules.sd.VAE`) and its
`first_stage_model` (also `sd_model.first_stage_model`); `sd_model.decode_first_stage` /
`encode_first_stage` are closures set by `forge_loader.load_model_for_a1111` that call `vae.decode` / `.encode`.

Where the host writes weights into that same module: `sd_vae.load_vae` (VAE dropdown, via
`reload_vae_weights`; `_load_vae_dict` copies the new weights in place when the architecture matches, or
builds a new VAE when it does not). Wrapped like A1111's. A checkpoint load builds a new VAE and fires
`model_loaded`; switching to a checkpoint kept in memory (`loaded_sd_models`) fires nothing, which is why
`process` checks the VAE every render.

Its dtype record: `vae.vae_dtype` (plus the patcher's cached size), as in Forge. Its load-time choice:
`ldm_patched/modules/model_management.py` `vae_dtype(device, allowed_dtypes)`, which
`ldm_patched/modules/sd.py` `VAE.__init__` casts the freshly loaded module to and records as `vae_dtype`.
"""
from .forge import ForgeFamilyAdapter


class ReForgeAdapter(ForgeFamilyAdapter):
    name = "reforge"

    def memory_manager(self):
        from ldm_patched.modules import model_management
        return model_management

    def host_vae_dtype(self, vae):
        # ldm_patched/modules/sd.py VAE.__init__: vae_dtype(self.device, self.working_dtypes)
        return self._host_vae_dtype(vae.device, getattr(vae, "working_dtypes", []))

    def host_choices(self):
        from ldm_patched.modules.args_parser import args
        return self._vae_flags(args)

    def install_hooks(self):
        super().install_hooks()
        from modules import sd_vae
        self.wrap_host_load(sd_vae, "reload_vae_weights", "sd_model")
        self.wrap_host_load(sd_vae, "load_vae", "model")
