"""AUTOMATIC1111 stable-diffusion-webui v1.10.

Where the VAE is: `sd_model.first_stage_model` (ldm `AutoencoderKL` for SD1/2, sgm's for SDXL); the web UI
decodes through `sd_model.decode_first_stage` -> `first_stage_model.decode`, and encodes through
`encode_first_stage` -> `first_stage_model.encode`, so the engine on the module sees every full VAE call.

Where the host writes VAE weights into that same module: `sd_models.load_model_weights` (checkpoint load and
switch) and `sd_vae.load_vae` (the VAE dropdown, via `reload_vae_weights`; it also snapshots and restores
the checkpoint's own VAE). Those are wrapped so the host loads into its own weights and dtype.

Its dtype record: the module global `devices.dtype_vae`, which the host casts the VAE to on load, in
`_load_vae_dict`, on every full encode (`images_tensor_to_samples`) and in its NaN fallback.
"""
import torch

from .adapter import HostAdapter, VaeTarget


class A1111Adapter(HostAdapter):
    name = "a1111"

    def target_of(self, sd_model):
        module = getattr(sd_model, "first_stage_model", None) if sd_model is not None else None
        if module is None or not hasattr(module, "decode"):
            return None
        from modules import devices
        device = devices.device if devices.device is not None else torch.device("cpu")
        return VaeTarget(module, torch.device(device), self.hold(devices, "dtype_vae"))

    def current_model(self):
        from modules import sd_models
        return sd_models.model_data.sd_model

    def host_flags(self):
        from modules import shared
        cmd, opts = shared.cmd_opts, shared.opts
        flags = []
        if getattr(cmd, "no_half", False):
            flags.append("--no-half")
        if getattr(cmd, "no_half_vae", False):
            flags.append("--no-half-vae")
        if getattr(cmd, "precision", None) == "half":
            flags.append("--precision half")
        if getattr(opts, "auto_vae_precision_bfloat16", False):
            flags.append("the setting 'Automatically convert VAE to bfloat16'")
        if getattr(opts, "auto_vae_precision", False):
            flags.append("the setting 'Automatically revert VAE to 32-bit floats'")
        return flags

    def install_hooks(self):
        from modules import sd_models, sd_vae
        self.wrap_host_load(sd_vae, "reload_vae_weights", "sd_model")
        self.wrap_host_load(sd_vae, "load_vae", "model")
        self.wrap_host_load(sd_models, "load_model_weights", "model")

    def after_release(self, module):
        # The VAE is a Lightning module: its `dtype` is whatever the last `.to()` said, and the host casts
        # decode inputs to it. If the host recast the module while we held the dtype, or changed
        # devices.dtype_vae itself (its NaN fallback), put module and record back in line the host's way.
        from modules import devices
        dtype = devices.dtype_vae
        if not _all_of(module, dtype):
            module.to(dtype)


def _all_of(module, dtype):
    if getattr(module, "dtype", dtype) != dtype:
        return False
    return all(t.dtype == dtype for t in module.parameters() if t.is_floating_point())
