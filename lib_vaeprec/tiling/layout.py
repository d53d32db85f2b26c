"""The stages of an SD-family VAE encoder/decoder, in the order their forward runs them.

Two layouts exist in the wild: diffusers (`up_blocks[i].resnets`, `upsamplers`, `mid_block.resnets` and
`.attentions`, `conv_norm_out`) and the original one used by A1111 (ldm/sgm), Forge (backend/nn/vae.py)
and reForge (ldm_patched): (`up[i].block`, `up[i].upsample`, `mid.block_1/attn_1/block_2`, `norm_out`).
A layout we do not recognise (attention inside the up path, give_pre_end, norms that are not GroupNorm,
...) gives None: the caller then runs the VAE untiled.
"""
import functools
import inspect
from dataclasses import dataclass, field

import torch

# Stage kinds: "conv" (3x3, same size), "resnet", "attention", "down" (pad + stride-2 conv), "up"
# (nearest 2x + conv), "mid" (a mid block of unknown structure, run whole).


@dataclass
class Layout:
    stages: list = field(default_factory=list)   # [(kind, module)] in forward order, before the output layers
    norm_out: torch.nn.Module = None
    conv_out: torch.nn.Module = None
    tanh_out: bool = False
    body_start: int = 0      # the first stage after the mid block (the decoder's up path)


def _resnet_ok(block):
    return all(isinstance(getattr(block, n, None), torch.nn.GroupNorm) for n in ("norm1", "norm2")) and \
        all(isinstance(getattr(block, n, None), torch.nn.Conv2d) for n in ("conv1", "conv2"))


def _mid(coder):
    """The mid block's stages (diffusers UNetMidBlock2D.forward: resnets[0], then each attention and the
    resnet after it; ldm: block_1, attn_1, block_2)."""
    block = getattr(coder, "mid_block", None)
    if block is not None:
        resnets, attentions = getattr(block, "resnets", None), getattr(block, "attentions", None)
        if resnets is None or attentions is None:
            return [("mid", block)]
        stages = [("resnet", resnets[0])]
        for attn, resnet in zip(attentions, resnets[1:]):
            if attn is not None:
                stages.append(("attention", attn))
            stages.append(("resnet", resnet))
        return stages
    mid = getattr(coder, "mid", None)
    if mid is not None and all(hasattr(mid, n) for n in ("block_1", "attn_1", "block_2")):
        return [("resnet", mid.block_1), ("attention", mid.attn_1), ("resnet", mid.block_2)]
    return None


def _valid(stages, norm_out):
    if stages is None or not isinstance(norm_out, torch.nn.GroupNorm):
        return False
    return all(_resnet_ok(m) for kind, m in stages if kind == "resnet")


def decoder_layout(decoder):
    mid = _mid(decoder)
    if mid is None or getattr(decoder, "give_pre_end", False):
        return None
    body = []
    if hasattr(decoder, "up_blocks"):
        for block in decoder.up_blocks:
            if getattr(block, "attentions", None):
                return None
            body += [("resnet", r) for r in block.resnets]
            body += [("up", u) for u in (block.upsamplers or [])]
        norm_out = decoder.conv_norm_out
    elif hasattr(decoder, "up"):
        for level in reversed(range(len(decoder.up))):
            stage = decoder.up[level]
            if len(getattr(stage, "attn", [])) > 0:
                return None
            body += [("resnet", r) for r in stage.block]
            if hasattr(stage, "upsample") and level != 0:
                body.append(("up", stage.upsample))
        norm_out = decoder.norm_out
    else:
        return None
    stages = [("conv", decoder.conv_in)] + mid + body
    if not _valid(stages, norm_out):
        return None
    return Layout(stages, norm_out, decoder.conv_out, bool(getattr(decoder, "tanh_out", False)),
                  body_start=1 + len(mid))


def encoder_layout(encoder):
    mid = _mid(encoder)
    if mid is None:
        return None
    head = [("conv", encoder.conv_in)]
    if hasattr(encoder, "down_blocks"):
        for block in encoder.down_blocks:
            if getattr(block, "attentions", None):
                return None
            head += [("resnet", r) for r in block.resnets]
            head += [("down", d) for d in (block.downsamplers or [])]
        norm_out = encoder.conv_norm_out
    elif hasattr(encoder, "down"):
        for level, stage in enumerate(encoder.down):
            if len(getattr(stage, "attn", [])) > 0:
                return None
            head += [("resnet", r) for r in stage.block]
            if hasattr(stage, "downsample") and level != len(encoder.down) - 1:
                head.append(("down", stage.downsample))
        norm_out = encoder.norm_out
    else:
        return None
    stages = head + mid
    if not _valid(stages, norm_out):
        return None
    return Layout(stages, norm_out, encoder.conv_out, body_start=len(stages))


def layout_of(module, kind):
    """The layout of a VAE's decoder (kind "decode") or encoder ("encode"), or None."""
    coder = getattr(module, "decoder" if kind == "decode" else "encoder", None)
    if coder is None:
        return None
    return (decoder_layout if kind == "decode" else encoder_layout)(coder)


def call_block(module, h):
    """Calls a VAE block: resnets take (x, temb) with temb required; attention and mid blocks take (x)."""
    return module(h, None) if _needs_temb(type(module)) else module(h)


@functools.lru_cache(maxsize=None)
def _needs_temb(cls):
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) >= 2


def out_channels(kind, module):
    """Channels of a stage's output."""
    if kind == "resnet":
        return module.conv2.out_channels
    if kind in ("attention", "mid"):
        return None          # as many as its input
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1].out_channels


def out_size(kind, height, width):
    if kind == "up":
        return 2 * height, 2 * width
    if kind == "down":
        return height // 2, width // 2       # pad (0, 1, 0, 1), then a stride-2 3x3 conv
    return height, width
