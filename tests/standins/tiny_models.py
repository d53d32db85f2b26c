"""Tiny VAE modules shaped like each web UI's, built from a real (tiny) diffusers AutoencoderKL's parts.

The tiny VAE has two blocks, so it scales by 2 (an 8x8 latent decodes to 16x16 pixels), not 8.
"""
import torch
from diffusers import AutoencoderKL


def tiny_diffusers_vae(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                         layers_per_block=1).eval()


def vae_state_dict(module_cls, seed):
    """A state dict for `module_cls` with weights of another seed: a different VAE file of the same shape."""
    return {k: v.clone() for k, v in module_cls(seed=seed).state_dict().items()}


class DiagonalGaussianDistribution:
    """Stand-in for ldm.modules.distributions.distributions.DiagonalGaussianDistribution(parameters,
    deterministic=False) (Stability-AI/stablediffusion; sgm and Forge's backend/nn/vae.py have the same)."""

    def __init__(self, parameters, deterministic=False):
        self.parameters, self.deterministic = parameters, deterministic
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self):
        return self.mean + self.std * torch.randn(self.mean.shape, generator=torch.Generator().manual_seed(0))

    def mode(self):
        return self.mean


class _TinyParts(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        vae = tiny_diffusers_vae(seed)
        self.encoder, self.decoder = vae.encoder, vae.decoder
        self.quant_conv, self.post_quant_conv = vae.quant_conv, vae.post_quant_conv


class LdmAutoencoderKL(_TinyParts):
    """Stand-in for ldm.models.autoencoder.AutoencoderKL (Stability-AI/stablediffusion, the SD1/SD2 VAE of
    A1111): encode(x) -> DiagonalGaussianDistribution(quant_conv(encoder(x))); decode(z) ->
    decoder(post_quant_conv(z)). It is a Lightning module, whose `dtype` is what the last .to() set
    (lightning's DeviceDtypeModuleMixin), not the weights' dtype; A1111 casts decode inputs to it."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self._dtype = torch.float32

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    @property
    def dtype(self):
        return self._dtype

    def to(self, *args, **kwargs):
        dtype = torch._C._nn._parse_to(*args, **kwargs)[1]
        if dtype is not None:
            self._dtype = dtype
        return super().to(*args, **kwargs)


class LatentDiffusion(torch.nn.Module):
    """Stand-in for ldm.models.diffusion.ddpm.LatentDiffusion (A1111's sd_model for SD1/SD2): only the
    first-stage part. decode_first_stage(z) -> first_stage_model.decode(z / scale_factor);
    encode_first_stage(x) -> first_stage_model.encode(x); get_first_stage_encoding(posterior) ->
    scale_factor * posterior.sample()."""

    def __init__(self, seed=0):
        super().__init__()
        self.first_stage_model = LdmAutoencoderKL(seed)
        self.scale_factor = 0.18215
        self.sd_checkpoint_info = None
        self.lowvram = False

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(1.0 / self.scale_factor * z)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise NotImplementedError(type(encoder_posterior))
        return self.scale_factor * z


class IntegratedAutoencoderKL(_TinyParts):
    """Stand-in for Forge's backend/nn/vae.py IntegratedAutoencoderKL: encode(x, regulation=None) returns
    a latent tensor (posterior.sample() or regulation(posterior)); decode(z); process_in/process_out scale."""

    scaling_factor = 0.18215
    shift_factor = 0.0

    def encode(self, x, regulation=None):
        posterior = DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))
        return regulation(posterior) if regulation is not None else posterior.sample()

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scaling_factor

    def process_out(self, latent):
        return (latent / self.scaling_factor) + self.shift_factor


class LdmPatchedAutoencoderKL(_TinyParts):
    """Stand-in for reForge's ldm_patched/ldm/models/autoencoder.py AutoencoderKL (AutoencodingEngineLegacy):
    encode(x, return_reg_log=False) -> the posterior's mode (DiagonalGaussianRegularizer, sample=False);
    decode(z, **decoder_kwargs)."""

    def encode(self, x, return_reg_log=False):
        z = DiagonalGaussianDistribution(self.quant_conv(self.encoder(x))).mode()
        return (z, {}) if return_reg_log else z

    def decode(self, z, **decoder_kwargs):
        return self.decoder(self.post_quant_conv(z))
