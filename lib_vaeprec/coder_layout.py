"""The stages of an SD-family VAE encoder/decoder, in the order their forward runs them.

Two layouts exist in the wild: diffusers (`up_blocks[i].resnets`, `upsamplers`, `conv_norm_out`) and
the original one used by A1111 (ldm/sgm), Forge (backend/nn/vae.py) and reForge (ldm_patched):
(`up[i].block`, `up[i].upsample`, `mid.block_1/attn_1/block_2`, `norm_out`). A layout we do not
recognise (attention inside the up path, give_pre_end, ...) returns None: the caller then runs the
VAE untiled.
"""
import functools
import inspect
from dataclasses import dataclass, field

import torch


@dataclass
class Layout:
    head: list = field(default_factory=list)     # [(kind, module)] before the mid block ("conv", "resnet", "down")
    mid: list = field(default_factory=list)      # modules run on the whole latent, in order
    body: list = field(default_factory=list)     # [(kind, module)] after the mid block ("resnet", "up")
    norm_out: torch.nn.Module = None
    conv_out: torch.nn.Module = None
    tanh_out: bool = False


def _mid(coder):
    if hasattr(coder, "mid_block"):
        return [coder.mid_block]
    mid = getattr(coder, "mid", None)
    if mid is not None and all(hasattr(mid, n) for n in ("block_1", "attn_1", "block_2")):
        return [mid.block_1, mid.attn_1, mid.block_2]
    return None


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
    if not isinstance(norm_out, torch.nn.GroupNorm):
        return None
    return Layout([("conv", decoder.conv_in)], mid, body, norm_out, decoder.conv_out,
                  bool(getattr(decoder, "tanh_out", False)))


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
    if not isinstance(norm_out, torch.nn.GroupNorm):
        return None
    return Layout(head, mid, [], norm_out, encoder.conv_out)


def call_block(module, h):
    """Calls a VAE block: resnets take (x, temb) with temb required; attention and mid blocks take (x)."""
    return module(h, None) if _needs_temb(type(module)) else module(h)


@functools.lru_cache(maxsize=None)
def _needs_temb(cls):
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) >= 2


def run_mid(mid, h):
    for module in mid:
        h = call_block(module, h)
    return h
