import json
import os

import pytest
import torch
from safetensors.torch import save_file

from lib_vaeprec.bench import cli, models


@pytest.mark.parametrize("args,message", [
    (["--dtypes", "bf17"], "unknown dtype"),
    (["--sizes", "100"], "multiples of 8"),
    (["--vae", "/no/such/vae.safetensors"], "no such VAE file"),
    (["--offload", "sideways"], "unknown offload"),
    (["--tile-size", "0x"], ""),
])
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    assert cli.main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    code = cli.main(["bench", "--device", "cpu", "--sizes", "128", "--dtypes", "fp32", "--runs", "1", "--warmup", "0",
                     "--tiling", "on", "--tile-size", "64", "--offload", "sequential", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "diffusers fp32" in out and "vaeprec fp32 tiled" in out
    data = json.load(open(tmp_path / "bench.json"))
    rows = {(r["op"], r["variant"]): r for r in data["rows"]}
    assert rows[("decode", "vaeprec fp32")]["psnr"] == 99.0
    assert rows[("decode", "vaeprec fp32 tiled")]["tiles"] > 1
    assert rows[("decode", "vaeprec fp32 tiled")]["psnr_vs_untiled"] > 90
    assert "psnr_vs_untiled" in rows[("decode", "vaeprec fp32 tiled")]
    assert os.path.getsize(tmp_path / "bench.png") > 1000


def _to_ldm_keys(state):
    """diffusers -> original (ldm) key names of the SD VAE, for a file in the original layout."""
    import re
    out = {}
    for key, value in state.items():
        k = key
        k = re.sub(r"(encoder)\.down_blocks\.(\d)\.resnets\.(\d)", r"\1.down.\2.block.\3", k)
        k = re.sub(r"(encoder)\.down_blocks\.(\d)\.downsamplers\.0", r"\1.down.\2.downsample", k)
        k = re.sub(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)",
                   lambda m: f"decoder.up.{3 - int(m[1])}.block.{m[2]}", k)
        k = re.sub(r"decoder\.up_blocks\.(\d)\.upsamplers\.0",
                   lambda m: f"decoder.up.{3 - int(m[1])}.upsample", k)
        k = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
        k = k.replace("mid_block.attentions.0", "mid.attn_1").replace("conv_shortcut", "nin_shortcut")
        k = k.replace("conv_norm_out", "norm_out").replace("attn_1.group_norm", "attn_1.norm")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            k = k.replace(f"attn_1.{a}", f"attn_1.{b}")
        if ".attn_1." in k and k.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out["first_stage_model." + k] = value
    return out


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_load_user_vae_file(tmp_path, layout):
    vae = models.build("sd", seed=3)
    state = {k: v.half().contiguous() for k, v in vae.state_dict().items()}
    path = tmp_path / f"{layout}.safetensors"
    save_file(state if layout == "diffusers" else _to_ldm_keys(state), str(path))
    loaded = models.load_file(str(path))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key].float()), key
