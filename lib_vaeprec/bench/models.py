"""The VAEs the benchmark runs: the SD/SDXL architecture with seeded random weights (the embedded
default), or a user's .safetensors file in diffusers or original (ldm) layout."""
import os

import torch

SD_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512, scaling_factor=0.18215,
)
# The SD 1.x and SDXL VAEs share this architecture; 16-channel VAEs (SD3, Flux) add latent channels
# and drop the quant convs.
# "sdxl-fp16-overflow": the SDXL architecture whose later up blocks overflow fp16, as the real SDXL VAE's do
# (see overflow_fp16).
ARCHES = {
    "sd": SD_CONFIG,
    "sdxl": dict(SD_CONFIG, scaling_factor=0.13025, sample_size=1024),
    "sdxl-fp16-overflow": dict(SD_CONFIG, scaling_factor=0.13025, sample_size=1024),
    "sd3": dict(SD_CONFIG, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                scaling_factor=1.5305, shift_factor=0.0609),
}
OVERFLOW_FACTOR = 2.0 ** 15


def build(arch="sd", seed=0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    vae = AutoencoderKL(**ARCHES[arch]).eval()
    return overflow_fp16(vae) if arch == "sdxl-fp16-overflow" else vae


def overflow_fp16(vae, factor=OVERFLOW_FACTOR):
    """The same VAE with its decoder's residual stream `factor` (a power of two) times larger from the middle
    of its up path on: what the SDXL VAE is like next to its fp16-fix (which scaled it down by training).

    The convs that write into the stream scale with it (each resnet's conv2, the upsampler that starts the
    scaled part), the biases of those that read it and write it back (shortcuts, later upsamplers) too,
    and the GroupNorms that read it do not care about its scale. So bf16 and fp32 decode about the same image
    as the plain VAE (up to GroupNorm's eps), while the later up blocks' values (about 3 to 7 in the
    random-weight SD VAE) go past fp16's 65504 for factor 2^15, and an fp16 decode comes out NaN."""
    ups = vae.decoder.up_blocks
    start = len(ups) // 2
    with torch.no_grad():
        entry = ups[start - 1].upsamplers[0].conv
        entry.weight.mul_(factor)
        entry.bias.mul_(factor)
        for block in ups[start:]:
            for resnet in block.resnets:
                resnet.conv2.weight.mul_(factor)
                resnet.conv2.bias.mul_(factor)
                if resnet.conv_shortcut is not None:
                    resnet.conv_shortcut.bias.mul_(factor)
            for upsampler in block.upsamplers or []:
                upsampler.conv.bias.mul_(factor)
    return vae


class VaeFileError(Exception):
    """A --vae file that cannot be used, in one line."""


def _is_ldm_layout(keys):
    return any(k.startswith(("first_stage_model.", "decoder.up.", "encoder.down.")) for k in keys)


def _read(path):
    from safetensors.torch import load_file as load_safetensors
    if not os.path.isfile(path):
        raise VaeFileError(f"no such VAE file: {path}")
    try:
        return load_safetensors(path)
    except Exception as error:  # noqa: BLE001 - safetensors' own error type, and OSError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VaeFileError(f"{path} is not a readable .safetensors file ({reason})")


def _wrong_shapes(vae, state):
    expected = vae.state_dict()
    return [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
            if k in expected and v.shape != expected[k].shape]


def load_file(path):
    """A diffusers AutoencoderKL with the weights of `path` (.safetensors, diffusers or ldm layout).
    A file that cannot be one raises VaeFileError with a one-line reason."""
    from diffusers import AutoencoderKL
    state = _read(path)
    keys = list(state)
    if any(k.startswith("first_stage_model.") for k in keys):
        state = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    conv_in = state.get("decoder.conv_in.weight")
    if conv_in is None or conv_in.dim() != 4:
        raise VaeFileError(f"{path} holds no VAE decoder (no decoder.conv_in.weight of 4 dimensions)")
    latent_channels = conv_in.shape[1]
    config = dict(ARCHES["sd3" if latent_channels == 16 else "sd"])
    config["latent_channels"] = latent_channels
    config["use_quant_conv"] = config["use_post_quant_conv"] = "quant_conv.weight" in state
    if _is_ldm_layout(keys):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        try:
            state = convert_ldm_vae_checkpoint(state, config)
        except Exception as error:  # noqa: BLE001 - a partial or odd file fails inside diffusers' converter
            raise VaeFileError(f"{path}: its original-layout weights do not convert ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''})")
    try:
        vae = AutoencoderKL(**config)
    except Exception as error:  # noqa: BLE001 - e.g. a latent channel count no SD-family VAE has
        raise VaeFileError(f"{path}: no SD-family VAE has {latent_channels} latent channels ({type(error).__name__})")
    wrong = _wrong_shapes(vae, state)
    if wrong:
        key, got, want = wrong[0]
        raise VaeFileError(f"{path}: {len(wrong)} weights do not have the SD VAE's shapes, e.g. {key} "
                           f"is {list(got)}, expected {list(want)}")
    missing, _unexpected = vae.load_state_dict(state, strict=False)
    if missing:
        raise VaeFileError(f"{path}: {len(missing)} weights missing, e.g. {missing[0]}")
    return vae.eval()
