"""Stand-in for AUTOMATIC1111 stable-diffusion-webui v1.10 `modules` (CPU, tiny models)."""
