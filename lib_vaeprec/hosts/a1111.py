"""AUTOMATIC1111 stable-diffusion-webui v1.10.

Where the VAE is: `sd_model.first_stage_model` (ldm `AutoencoderKL` for SD1/2, sgm's for SDXL); the web UI
decodes through `sd_model.decode_first_stage` -> `first_stage_model.decode`, and encodes through
`encode_first_stage` -> `first_stage_model.encode`, so the engine on the module sees every full VAE call.

Where the host writes VAE weights into that same module: `sd_models.load_model_weights` (checkpoint load and
switch) and `sd_vae.load_vae` (the VAE dropdown, via `reload_vae_weights`; it also snapshots and restores
the checkpoint's own VAE). Those are wrapped so the host loads into its own weights and dtype.

Its dtype record: the module global `devices.dtype_vae`, which the host casts the VAE to on load, in
`_load_vae_dict`, on every full encode (`images_tensor_to_samples`) and in its NaN fallback. Its load-time
choice: `load_model_weights` calls `model.half()` with the VAE left out only under --no-half-vae, then casts
the VAE to `devices.dtype_vae`; `_load_vae_dict` loads into the VAE as it is, then casts it the same way.
"""
import contextlib

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

    def host_choices(self):
        from modules import shared
        cmd, opts = shared.cmd_opts, shared.opts
        choices = [(flag, True) for flag, given in (
            ("--no-half", getattr(cmd, "no_half", False)),
            ("--no-half-vae", getattr(cmd, "no_half_vae", False)),
            ("--precision half", getattr(cmd, "precision", None) == "half")) if given]
        # The NaN retries: while the extension picks the dtype, A1111's recast goes back through the
        # engine, and the extension's own NaN fallback takes their place.
        for key, label in (("auto_vae_precision_bfloat16", "Automatically convert VAE to bfloat16"),
                           ("auto_vae_precision", "Automatically revert VAE to 32-bit floats")):
            value = getattr(opts, key, None)
            info = getattr(opts, "data_labels", {}).get(key)
            changed = info is not None and value != info.default
            if value or changed:
                choices.append((f"the setting '{label}' ({'on' if value else 'off'})", changed))
        return choices

    @contextlib.contextmanager
    def loading_at(self, dtype):
        """`load_model_weights` halves the whole model, the VAE included, unless --no-half-vae (or
        --no-half): while the VAE must load at `dtype`, the host loads as if --no-half-vae were given."""
        from modules import shared
        cmd = shared.cmd_opts
        if dtype is None or getattr(cmd, "no_half_vae", False):
            yield
            return
        cmd.no_half_vae = True
        try:
            yield
        finally:
            cmd.no_half_vae = False

    def install_hooks(self):
        from modules import sd_models, sd_vae
        self.wrap_host_load(sd_vae, "reload_vae_weights", "sd_model")
        self.wrap_host_load(sd_vae, "load_vae", "model")
        self.wrap_host_load(sd_models, "load_model_weights", "model")
