"""Stand-in for backend/patcher/vae.py (Forge dfdcbab6) class VAE: casts the module to vae_dtype once, casts
every input to vae_dtype, calls first_stage_model.decode/encode; NHWC [0, 1] pixels."""
import torch

from backend import memory_management
from backend.patcher.base import ModelPatcher


class VAE:
    def __init__(self, model=None, device=None, dtype=None, no_init=False):
        if no_init:
            return
        self.memory_used_decode = lambda shape, dtype: (2178 * shape[2] * shape[3] * 64) * memory_management.dtype_size(dtype)
        self.memory_used_encode = lambda shape, dtype: (1767 * shape[2] * shape[3]) * memory_management.dtype_size(dtype)
        self.downscale_ratio = 2          # real: 2 ** (len(down_block_types) - 1); 8 for SD VAEs
        self.latent_channels = 4
        self.first_stage_model = model.eval()
        self.device = device if device is not None else memory_management.vae_device()
        offload_device = memory_management.vae_offload_device()
        self.vae_dtype = dtype if dtype is not None else memory_management.vae_dtype()
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = memory_management.intermediate_device()
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device, offload_device=offload_device)

    def decode_inner(self, samples_in):   # real: VAE.decode_inner (without the OOM -> tiled fallback)
        memory_management.load_models_gpu([self.patcher],
                                          memory_required=self.memory_used_decode(samples_in.shape, self.vae_dtype))
        samples = samples_in.to(self.vae_dtype).to(self.device)
        pixel_samples = torch.clamp((self.first_stage_model.decode(samples).to(self.output_device).float() + 1.0)
                                    / 2.0, min=0.0, max=1.0)
        return pixel_samples.to(self.output_device).movedim(1, -1)

    def decode(self, samples_in):   # real: VAE.decode, through patcher.model_options' wrapper if any
        wrapper = self.patcher.model_options.get('model_vae_decode_wrapper', None)
        return self.decode_inner(samples_in) if wrapper is None else wrapper(self.decode_inner, samples_in)

    def encode_inner(self, pixel_samples):   # real: VAE.encode_inner
        regulation = self.patcher.model_options.get("model_vae_regulation", None)
        pixel_samples = pixel_samples.movedim(-1, 1)
        memory_management.load_models_gpu([self.patcher],
                                          memory_required=self.memory_used_encode(pixel_samples.shape, self.vae_dtype))
        pixels_in = (2. * pixel_samples - 1.).to(self.vae_dtype).to(self.device)
        return self.first_stage_model.encode(pixels_in, regulation).to(self.output_device).float()

    def encode(self, pixel_samples):
        wrapper = self.patcher.model_options.get('model_vae_encode_wrapper', None)
        return self.encode_inner(pixel_samples) if wrapper is None else wrapper(self.encode_inner, pixel_samples)
