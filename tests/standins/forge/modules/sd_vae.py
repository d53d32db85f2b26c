"""Stand-in for modules/sd_vae.py (Forge dfdcbab6): a shell; the VAE comes with the model
(forge_additional_modules)."""
unspecified = object()
loaded_vae_file = None


def load_vae(model, vae_file=None, vae_source="from unknown source"):   # real: pass
    pass


def reload_vae_weights(sd_model=None, vae_file=unspecified):   # real: pass
    pass
