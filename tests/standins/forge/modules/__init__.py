"""Stand-in for Forge's (lllyasviel/stable-diffusion-webui-forge dfdcbab6) `modules` (CPU, tiny models)."""
