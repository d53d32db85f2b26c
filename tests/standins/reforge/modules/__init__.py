"""Stand-in for reForge's (Panchovix/stable-diffusion-webui-reForge main, 3b56b268) `modules` (CPU, tiny models)."""
