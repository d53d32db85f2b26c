import json
import os
import struct
import tempfile

import pytest
import torch
from safetensors.torch import save_file

from conftest import SMALL, make_vae
from lib_vaeprec.bench import cli, models


def _err_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("args,message", [
    (["--dtypes", "bf17"], "unknown dtype"),
    (["--dtypes", ""], "--dtypes is empty"),
    (["--dtypes", ","], "--dtypes is empty"),
    (["--sizes", ""], "--sizes is empty"),
    (["--sizes", "100"], "multiples of 8"),
    (["--sizes", "big"], "pixel sizes"),
    (["--offload", "sideways"], "unknown offload"),
    (["--offload", ""], "--offload is empty"),
    (["--speed", "warp"], "unknown speed option"),
    (["--tile-size", "0x"], "--tile-size"),
    (["--tile-size", "inf"], "--tile-size"),
    (["--tile-size", "1" + "0" * 400], "--tile-size"),
    (["--tile-size", "32"], "--tile-size"),
    (["--tile-size", "100000"], "--tile-size"),
    (["--tiling", "sideways"], "--tiling"),
    (["--free-gb", "-1"], "--free-gb"),
    (["--free-gb", "nan"], "--free-gb"),
    (["--cap-gb", "0"], "--cap-gb"),
    (["--cap-gb", "inf"], "--cap-gb"),
    (["--tiled-only", "--tiling", "off"], "leaves no rows"),
    (["--runs", "0"], "--runs"),
    (["--seed", "-1"], "--seed"),
    (["--bogus"], "unrecognized"),
    (["--device", "foo"], "not a torch device"),
    (["--vae", "/no/such/vae.safetensors"], "no such VAE file"),
    (["--device", "cpu", "--sizes", "100000"], "host memory"),
    (["--device", "cpu", "--batch", "100000"], "host memory"),
    (["--device", "cpu", "--sizes", "100000", "--tiling", "on"], "host memory"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, capsys, tmp_path):
    assert cli.main(["bench", *args, "--out", str(tmp_path / "out")]) == 2
    assert message in _err_line(capsys)
    assert capsys.readouterr().out == ""


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps(capsys, tmp_path):
    assert cli.main(["bench", "--device", "mps", "--out", str(tmp_path)]) == 2
    assert "no MPS device" in _err_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(capsys, tmp_path):
    assert cli.main(["bench", "--device", "cuda:1", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in _err_line(capsys)


def _bad_vae_files(tmp_path):
    """Files a user might pass as --vae: empty, text, truncated, only the header, mis-shaped tensors."""
    good = tmp_path / "good.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3)}, str(good))
    data = good.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    files = {"empty": b"", "text": b"this is not a safetensors file\n", "truncated": data[: len(data) // 2],
             "header-only": data[: 8 + header_len]}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(content)
    # a real VAE's weights, but not the SD VAE's shapes (the small test config)
    paths["mis-shaped"] = tmp_path / "mis-shaped.safetensors"
    save_file({k: v.contiguous() for k, v in make_vae(**SMALL).state_dict().items()}, str(paths["mis-shaped"]))
    return paths


@pytest.mark.parametrize("kind,message", [
    ("empty", "not a readable .safetensors"), ("text", "not a readable .safetensors"),
    ("truncated", "not a readable .safetensors"), ("header-only", "not a readable .safetensors"),
    ("mis-shaped", "do not have the SD VAE's shapes"),
])
def test_bad_vae_file_exits_2_with_one_line(kind, message, capsys, tmp_path):
    path = _bad_vae_files(tmp_path)[kind]
    assert cli.main(["bench", "--device", "cpu", "--vae", str(path), "--out", str(tmp_path / "out")]) == 2
    line = _err_line(capsys)
    assert message in line and str(path) in line


def _unwritable_dir(tmp_path):
    """A folder this process cannot write into (root writes through file modes, hence /sys)."""
    candidate = tmp_path / "locked"
    candidate.mkdir()
    candidate.chmod(0o500)
    for path in (str(candidate), "/sys"):
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError:
            return path
    pytest.skip("no folder here refuses writes")


def test_bad_out_is_refused_before_running(capsys, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [(str(a_file), "is a file, not a folder"), (str(a_file / "sub"), "is a file, not a folder"),
             (os.path.join(_unwritable_dir(tmp_path), "out"), "not writable")]
    for out, message in cases:
        assert cli.main(["bench", "--device", "cpu", "--sizes", "64", "--out", out]) == 2
        line = _err_line(capsys)
        assert message in line and "--out" in line
        assert capsys.readouterr().out == ""       # refused before the run: nothing measured and lost


def test_arch_with_vae_says_the_file_wins(tmp_path):
    vae = models.build("sd", seed=1)
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    args = cli.parser().parse_args(["--vae", str(path), "--arch", "sdxl"])
    loaded, note = cli.model_from(args)
    assert "--arch sdxl is ignored" in note and "file" in note
    assert loaded.config.latent_channels == 4
    assert cli.model_from(cli.parser().parse_args(["--vae", str(path)]))[1] is None


def test_tile_size_uses_the_extensions_limits():
    from lib_vaeprec.options import MAX_TILE_PX
    assert cli.tile_size(str(MAX_TILE_PX)) == MAX_TILE_PX
    assert cli.tile_size("0") == 0 and cli.tile_size(None) is None
    with pytest.raises(cli.UsageError, match=str(MAX_TILE_PX)):
        cli.tile_size(str(MAX_TILE_PX + 8))


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


def test_bench_writes_table_json_and_plot(tmp_path, capsys, monkeypatch):
    """A whole CPU run on a small VAE of the SD family's shape: tiled rows beside diffusers' tiled row."""
    monkeypatch.setattr(models, "build", lambda arch="sd", seed=0: make_vae(seed, **SMALL))
    code = cli.main(["bench", "--device", "cpu", "--sizes", "64,192", "--dtypes", "fp32", "--runs", "1",
                     "--warmup", "0", "--tiling", "on", "--tile-size", "64", "--offload", "sequential",
                     "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "diffusers fp32" in out and "vaeprec fp32 tiled" in out and "diffusers fp32 tiled" in out
    assert "first calls:" in out
    data = json.load(open(tmp_path / "bench.json"))
    assert data["meta"]["baseline"] == "diffusers fp32"
    rows = {(r["size"], r["op"], r["variant"]): r for r in data["rows"]}
    assert rows[(192, "decode", "vaeprec fp32")]["psnr"] == 99.0
    assert rows[(192, "decode", "diffusers fp32")]["x_time"] == 1
    ours, theirs = rows[(192, "decode", "vaeprec fp32 tiled")], rows[(192, "decode", "diffusers fp32 tiled")]
    assert ours["tiles"] > 1 and ours["psnr_vs_untiled"] > 90
    # diffusers' tiles at the same tile size: split, and blended (not equal to its untiled decode)
    assert theirs["tiles"] > 1 and theirs["tile_px"] == 64 and theirs["psnr_vs_untiled"] < 90
    assert rows[(64, "decode", "diffusers fp32 tiled")]["tiles"] == 0   # one tile: diffusers does not split
    assert all(r["first_ms"] is not None for r in data["rows"])
    assert os.path.getsize(tmp_path / "bench.png") > 1000


def test_free_gb_on_the_cpu_is_said_once_and_claimed_nowhere(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "build", lambda arch="sd", seed=0: make_vae(seed, **SMALL))
    code = cli.main(["bench", "--device", "cpu", "--free-gb", "1e30", "--sizes", "64", "--dtypes", "fp32",
                     "--runs", "1", "--warmup", "0", "--tiling", "on", "--tile-size", "64", "--no-encode",
                     "--no-baseline", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0
    assert "--free-gb applies to CUDA only" in captured.err
    assert "GB of GPU memory free" not in captured.out and "1e+30" not in captured.out
    assert json.load(open(tmp_path / "bench.json"))["meta"]["free_gb"] == 0


def test_a_size_whose_tiled_reference_finds_no_room_is_refused_before_any_work():
    """--sizes 8 --batch 1000000 on a CPU passed the footprint check and then ended in a PlanError traceback
    while making the tiled reference: the planner is asked first."""
    from lib_vaeprec.bench import footprint, runner
    from lib_vaeprec.options import VaeOptions
    vae = make_vae(**SMALL)
    variants = [runner.Variant("vaeprec fp32", "fp32", options=VaeOptions(dtype="fp32", tiling="off")),
                runner.Variant("vaeprec fp32 tiled", "fp32", options=VaeOptions(dtype="fp32", tiling="always"))]
    with pytest.raises(footprint.DoesNotFit, match="cannot fit: the fp32 reference .* and tiled its decode: its"):
        footprint.plan(vae, torch.device("cpu"), [8], 100000, variants, ["decode"], free_bytes=1.5e9,
                       host_free_bytes=1.5e9)
    fit = footprint.plan(vae, torch.device("cpu"), [8], 10, variants, ["decode"], free_bytes=1.5e9,
                         host_free_bytes=1.5e9)
    assert not fit.skipped and not fit.tiled_reference


def test_first_call_rows_run_before_their_reference(tmp_path, capsys, monkeypatch):
    """--first-call: the tiled row is the process's first call (its 1st ms), the fp32 reference is made
    after it and its psnr still filled in; every call's failed rungs are reported."""
    monkeypatch.setattr(models, "build", lambda arch="sd", seed=0: make_vae(seed, **SMALL))
    code = cli.main(["bench", "--device", "cpu", "--sizes", "128", "--dtypes", "fp32", "--runs", "1",
                     "--tiling", "on", "--tile-size", "64", "--tiled-only", "--no-baseline", "--first-call",
                     "--out", str(tmp_path)])
    assert code == 0
    rows = json.load(open(tmp_path / "bench.json"))["rows"]
    assert [(r["variant"], r["op"]) for r in rows] == [("vaeprec fp32 tiled", "decode")]
    assert rows[0]["psnr"] > 90 and rows[0]["first_ms"] is not None and rows[0]["rungs_failed"] == []
