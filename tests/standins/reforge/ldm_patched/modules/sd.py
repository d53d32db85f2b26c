"""Stand-in for ldm_patched/modules/sd.py (reForge 3b56b268) class VAE: builds the module from a state dict,
casts it to vae_dtype(device, working_dtypes) once, casts inputs to vae_dtype on every call."""
import torch

from ldm_patched.modules import model_management
from ldm_patched.modules.model_patcher import ModelPatcher
from tiny_models import LdmPatchedAutoencoderKL


class VAE:
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None, no_init=False):
        if no_init:
            return
        self.memory_used_decode = lambda shape, dtype: (2178 * shape[2] * shape[3] * 64) * model_management.dtype_size(dtype)
        self.memory_used_encode = lambda shape, dtype: (1767 * shape[2] * shape[3]) * model_management.dtype_size(dtype)
        self.downscale_ratio = self.upscale_ratio = 2   # real: 8 for SD VAEs
        self.latent_channels = 4
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.first_stage_model = LdmPatchedAutoencoderKL(seed=0).eval()
        self.first_stage_model.load_state_dict(sd, strict=False)
        self.device = device if device is not None else model_management.vae_device()
        offload_device = model_management.vae_offload_device()
        self.vae_dtype = dtype if dtype is not None else model_management.vae_dtype(self.device, self.working_dtypes)
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = model_management.intermediate_device()
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device, offload_device=offload_device)

    def decode(self, samples_in, vae_options={}):   # real: VAE.decode (without the OOM -> tiled fallback)
        model_management.load_models_gpu([self.patcher],
                                         memory_required=self.memory_used_decode(samples_in.shape, self.vae_dtype))
        samples = samples_in.to(self.vae_dtype).to(self.device)
        out = self.process_output(self.first_stage_model.decode(samples, **vae_options).to(self.output_device).float())
        return out.to(self.output_device).movedim(1, -1)

    def encode(self, pixel_samples):   # real: VAE.encode
        pixel_samples = pixel_samples.movedim(-1, 1)
        model_management.load_models_gpu([self.patcher],
                                         memory_required=self.memory_used_encode(pixel_samples.shape, self.vae_dtype))
        pixels_in = self.process_input(pixel_samples).to(self.vae_dtype).to(self.device)
        return self.first_stage_model.encode(pixels_in).to(self.output_device).float()
