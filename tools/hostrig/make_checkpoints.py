"""Random-weight checkpoints in the original (ldm/sgm) single-file layout that A1111, Forge and reForge load.

    python tools/hostrig/make_checkpoints.py --webui DIR [--which sd15,sdxl,overflow] [--device cuda]

Writes into DIR/models/Stable-diffusion/ `rig-sd15.safetensors` and `rig-sdxl.safetensors`, and into
DIR/models/VAE/ `rig-sdxl-fp16-overflow.safetensors` (a VAE alone). Seeded; UNet and text encoders in fp16,
the VAE in fp32.

- UNet: `sgm.modules.diffusionmodules.openaimodel.UNetModel` (repositories/generative-models, the code A1111
  runs for SDXL; its keys are ldm's too) built from the host's configs: `v1-inference.yaml`
  (model.params.unet_config) and generative-models' `configs/inference/sd_xl_base.yaml`
  (model.params.network_config). Its output layers start at zero, as in ldm, so the sampler returns its
  starting noise: the latents are seeded noise, the same in every host.
- VAE: `lib_vaeprec.bench.models.build` ("sd" seed 0, "sdxl" and "sdxl-fp16-overflow" seed 1: the
  overflow VAE decodes about what the SDXL checkpoint's VAE decodes in bf16/fp32), converted from the
  diffusers layout to ldm's.
- Text encoders: CLIP ViT-L/14 in the Hugging Face layout (`cond_stage_model.transformer.` in SD1.5,
  `conditioner.embedders.0.transformer.` in SDXL) from the CLIP config in the rig's offline cache (reForge's
  `ldm_patched/modules/sd1_clip_config.json`), and for SDXL OpenCLIP ViT-bigG/14 in open_clip's layout
  (`conditioner.embedders.1.model.`) sized from open_clip's own `model_configs/ViT-bigG-14.json`.
"""
import argparse
import json
import math
import os
import sys
import time
import types

import torch
import yaml
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _import_sgm_unet(webui):
    """sgm's UNetModel without running sgm's package __init__ files (they import the whole training
    stack: Lightning, open_clip, kornia)."""
    base = os.path.join(webui, "repositories", "generative-models")
    for name in ("sgm", "sgm.modules", "sgm.modules.diffusionmodules"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(base, *name.split("."))]
            sys.modules[name] = module
    from sgm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel


def unet_state(webui, arch, device):
    if arch == "sd15":
        config_path = os.path.join(webui, "rig-configs", "v1-inference.yaml")
        params = yaml.safe_load(open(config_path))["model"]["params"]["unet_config"]["params"]
    else:
        config_path = os.path.join(webui, "repositories", "generative-models", "configs", "inference",
                                   "sd_xl_base.yaml")
        params = yaml.safe_load(open(config_path))["model"]["params"]["network_config"]["params"]
    params = dict(params, use_checkpoint=False)
    for unused in ("use_fp16", "image_size"):     # ldm's v1 UNet takes them; sgm's does not use them
        params.pop(unused, None)
    if "spatial_transformer_attn_type" in params:
        params["spatial_transformer_attn_type"] = "softmax"   # same weights; xformers is not needed to build
    UNetModel = _import_sgm_unet(webui)
    with torch.device(device):
        unet = UNetModel(**params)
    state = {"model.diffusion_model." + k: v.half() for k, v in unet.state_dict().items()}
    del unet
    return state, os.path.relpath(config_path, webui)


# diffusers AutoencoderKL -> ldm AutoencoderKL key names (the decoder's up blocks run in reverse order).
def vae_to_ldm(diffusers_state, levels=4, layers=2):
    out = {}
    renames = [("conv_norm_out.", "norm_out."), ("conv_shortcut.", "nin_shortcut."),
               ("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."),
               ("mid_block.attentions.0.to_q.", "mid.attn_1.q."), ("mid_block.attentions.0.to_k.", "mid.attn_1.k."),
               ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
               ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out.")]
    renames += [(f"mid_block.resnets.{j}.", f"mid.block_{j + 1}.") for j in range(2)]
    for i in range(levels):
        for j in range(layers + 1):
            renames.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
            renames.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}."))
        renames.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv."))
        renames.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{levels - 1 - i}.upsample.conv."))
    for key, value in diffusers_state.items():
        new = key
        for old, repl in renames:
            new = new.replace(old, repl)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]     # ldm's attention projections are 1x1 convs
        out[new] = value.contiguous()
    return out


def vae_state(arch, seed):
    sys.path.insert(0, ROOT)
    from lib_vaeprec.bench.models import ARCHES, build
    vae = build(arch, seed=seed)
    diffusers_state = vae.state_dict()
    ldm = vae_to_ldm(diffusers_state)
    try:    # check the mapping both ways with diffusers' own converter
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        back = convert_ldm_vae_checkpoint(dict(ldm), dict(ARCHES[arch]))
        assert set(back) == set(diffusers_state), set(back) ^ set(diffusers_state)
        assert all(torch.equal(back[k].reshape(diffusers_state[k].shape), diffusers_state[k]) for k in back)
    except ImportError:
        pass
    return {k: v.float().cpu() for k, v in ldm.items()}


def clip_l_state(webui, prefix, device):
    snapshot = os.path.join(webui, "rig-hf", "hub", "models--openai--clip-vit-large-patch14", "snapshots")
    config = json.load(open(os.path.join(snapshot, os.listdir(snapshot)[0], "config.json")))
    config = config.get("text_config", config)
    width, layers, inner = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    vocab, ctx = config["vocab_size"], config["max_position_embeddings"]
    std = config.get("initializer_range", 0.02)
    state = {"text_model.embeddings.token_embedding.weight": torch.randn(vocab, width, device=device) * std,
             "text_model.embeddings.position_embedding.weight": torch.randn(ctx, width, device=device) * std,
             "text_model.embeddings.position_ids": torch.arange(ctx, device=device)[None],
             "text_model.final_layer_norm.weight": torch.ones(width, device=device),
             "text_model.final_layer_norm.bias": torch.zeros(width, device=device)}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[p + f"self_attn.{proj}.weight"] = torch.randn(width, width, device=device) * std / math.sqrt(2 * layers)
            state[p + f"self_attn.{proj}.bias"] = torch.zeros(width, device=device)
        for norm in ("layer_norm1", "layer_norm2"):
            state[p + norm + ".weight"] = torch.ones(width, device=device)
            state[p + norm + ".bias"] = torch.zeros(width, device=device)
        state[p + "mlp.fc1.weight"] = torch.randn(inner, width, device=device) * std
        state[p + "mlp.fc1.bias"] = torch.zeros(inner, device=device)
        state[p + "mlp.fc2.weight"] = torch.randn(width, inner, device=device) * std / math.sqrt(2 * layers)
        state[p + "mlp.fc2.bias"] = torch.zeros(width, device=device)
    return {prefix + k: (v if v.dtype == torch.int64 else v.half()) for k, v in state.items()}


def clip_g_state(prefix, device, config_path=None):
    if config_path is None:
        import importlib.util
        package = importlib.util.find_spec("open_clip").submodule_search_locations[0]
        config_path = os.path.join(package, "model_configs", "ViT-bigG-14.json")
    text = json.load(open(config_path))["text_cfg"]
    width, layers, ctx, vocab = text["width"], text["layers"], text["context_length"], text["vocab_size"]
    inner = int(width * text.get("mlp_ratio", 4.0))
    embed_dim = json.load(open(config_path))["embed_dim"]
    std = width ** -0.5
    state = {"token_embedding.weight": torch.randn(vocab, width, device=device) * 0.02,
             "positional_embedding": torch.randn(ctx, width, device=device) * 0.01,
             "ln_final.weight": torch.ones(width, device=device), "ln_final.bias": torch.zeros(width, device=device),
             "text_projection": torch.randn(width, embed_dim, device=device) * std,
             "logit_scale": torch.tensor(math.log(1 / 0.07), device=device)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        state[p + "attn.in_proj_weight"] = torch.randn(3 * width, width, device=device) * std
        state[p + "attn.in_proj_bias"] = torch.zeros(3 * width, device=device)
        state[p + "attn.out_proj.weight"] = torch.randn(width, width, device=device) * std / math.sqrt(2 * layers)
        state[p + "attn.out_proj.bias"] = torch.zeros(width, device=device)
        for norm in ("ln_1", "ln_2"):
            state[p + norm + ".weight"] = torch.ones(width, device=device)
            state[p + norm + ".bias"] = torch.zeros(width, device=device)
        state[p + "mlp.c_fc.weight"] = torch.randn(inner, width, device=device) * std
        state[p + "mlp.c_fc.bias"] = torch.zeros(inner, device=device)
        state[p + "mlp.c_proj.weight"] = torch.randn(width, inner, device=device) * (2 * width) ** -0.5
        state[p + "mlp.c_proj.bias"] = torch.zeros(width, device=device)
    return {prefix + k: v.half() for k, v in state.items()}, "open_clip/" + os.path.relpath(
        config_path, os.path.dirname(os.path.dirname(config_path)))


def save(state, path, metadata):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path,
              metadata={k: str(v) for k, v in metadata.items()})
    print(f"{path}: {len(state)} tensors, {os.path.getsize(path) / 2 ** 30:.2f} GiB", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webui", required=True)
    parser.add_argument("--which", default="sd15,sdxl,overflow")
    parser.add_argument("--open-clip-config", help="open_clip's model_configs/ViT-bigG-14.json (default: found "
                        "through the installed open_clip)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    which = args.which.split(",")
    models = os.path.join(args.webui, "models")
    start = time.time()
    if "sd15" in which:
        torch.manual_seed(15)
        state, source = unet_state(args.webui, "sd15", args.device)
        state.update(clip_l_state(args.webui, "cond_stage_model.transformer.", args.device))
        state.update({"first_stage_model." + k: v for k, v in vae_state("sd", 0).items()})
        save(state, os.path.join(models, "Stable-diffusion", "rig-sd15.safetensors"),
             dict(rig="random weights", unet_config=source, vae="lib_vaeprec.bench.models.build('sd', 0)"))
        del state
    if "sdxl" in which:
        torch.manual_seed(10)
        state, source = unet_state(args.webui, "sdxl", args.device)
        state.update(clip_l_state(args.webui, "conditioner.embedders.0.transformer.", args.device))
        clip_g, g_source = clip_g_state("conditioner.embedders.1.model.", args.device,
                                        args.open_clip_config)
        state.update(clip_g)
        state.update({"first_stage_model." + k: v for k, v in vae_state("sdxl", 1).items()})
        save(state, os.path.join(models, "Stable-diffusion", "rig-sdxl.safetensors"),
             dict(rig="random weights", unet_config=source, clip_g=g_source,
                  vae="lib_vaeprec.bench.models.build('sdxl', 1)"))
        del state
    if "overflow" in which:
        save(vae_state("sdxl-fp16-overflow", 1), os.path.join(models, "VAE", "rig-sdxl-fp16-overflow.safetensors"),
             dict(rig="random weights", vae="lib_vaeprec.bench.models.build('sdxl-fp16-overflow', 1)"))
    print(f"checkpoints made in {time.time() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
