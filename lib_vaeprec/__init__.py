"""VAE Precision: run Stable Diffusion VAEs in bf16/fp16/fp32 (or mixed), never black, tiled when
large, offloaded when asked, with per-call stats. Host-independent core; web UI adapters in hosts/."""
from .diffusers_adapter import apply, remove
from .engine import VaeEngine, engine_of
from .options import VaeOptions

__all__ = ["apply", "remove", "VaeEngine", "engine_of", "VaeOptions"]
