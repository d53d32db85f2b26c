"""What the bench runs without flags on each kind of device, and what it leaves out to fit memory."""
import pytest
import torch

from conftest import SMALL, make_vae
from lib_vaeprec.bench import cli, footprint, runner
from lib_vaeprec.device_caps import DeviceCaps

H100 = DeviceCaps(kind="cuda", name="H100", cuda_capability=(9, 0), native_bf16=True, native_fp16=True)
TURING = DeviceCaps(kind="cuda", name="T4", cuda_capability=(7, 5), native_bf16=False, native_fp16=True)
CPU = DeviceCaps(kind="cpu", name="cpu")
CPU_BF16 = DeviceCaps(kind="cpu", name="cpu", native_bf16=True)


def _plan(caps, *flags):
    args = cli.parser().parse_args(list(flags))
    sizes = cli._sizes(args.sizes) if args.sizes else cli.default_sizes(caps)
    return sizes, cli.variants_from(args, caps, sizes)


def test_default_on_a_gpu_both_fp32_rows_main_dtype_and_one_tiled_row():
    sizes, variants = _plan(H100)
    assert sizes == [1024, 2048]
    assert [v.name for v in variants] == [
        "diffusers fp32 (TF32)", "diffusers fp32 (strict)", "diffusers bf16", "vaeprec auto (mixed)",
        "vaeprec bf16", "vaeprec bf16 tiled", "diffusers bf16 tiled"]
    assert variants[3].options.dtype == "auto"              # what the product runs by default, beside bf16
    tf32 = {v.name: v.tf32 for v in variants}
    assert tf32["diffusers fp32 (TF32)"] is True and tf32["diffusers fp32 (strict)"] is False
    assert all(tf32[n] is None for n in tf32 if "fp32" not in n)          # the web UIs' setting
    assert cli.baseline_of(variants) == "diffusers fp32 (TF32)"
    tiled = [v for v in variants if v.is_tiled]
    assert all(v.sizes == (2048,) and v.limited_memory for v in tiled)
    assert tiled[0].options.tile_size == 512 and tiled[1].tile_px == 512 and tiled[1].plain
    assert cli.parser().parse_args([]).cudnn_benchmark == "off"              # as the web UIs leave it
    assert not any(v.options.cudnn_benchmark for v in variants if not v.plain)


def test_default_per_device():
    assert [v.name for v in _plan(TURING)[1]][2:4] == ["diffusers fp16", "vaeprec fp16"]   # auto: fp16
    sizes, variants = _plan(CPU)
    assert sizes == [128]
    assert [v.name for v in variants] == ["diffusers fp32", "vaeprec fp32", "vaeprec fp32 tiled",
                                          "diffusers fp32 tiled"]
    assert variants[2].options.tile_size == 64 and variants[3].tile_px == 64
    assert variants[0].tf32 is None and cli.baseline_of(variants) == "diffusers fp32"   # no TF32 on a CPU
    assert [v.name for v in _plan(CPU_BF16)[1]] == ["diffusers fp32", "diffusers bf16", "vaeprec bf16",
                                                    "vaeprec bf16 tiled", "diffusers bf16 tiled"]


@pytest.mark.parametrize("tiling,label", [("on", "tiled"), ("auto", "tiling auto")])
def test_diffusers_tiled_row_beside_the_tiled_rows(tiling, label):
    _, variants = _plan(H100, "--dtypes", "bf16,fp16", "--tiling", tiling, "--free-gb", "2", "--sizes", "1024,2048")
    names = [v.name for v in variants]
    assert f"vaeprec bf16 {label}" in names and f"vaeprec fp16 {label}" in names
    theirs = variants[names.index("diffusers bf16 tiled")]       # the main dtype, once
    assert names.count("diffusers bf16 tiled") == 1 and "diffusers fp16 tiled" not in names
    assert theirs.plain and theirs.tiled and theirs.limited_memory and theirs.sizes == ()
    assert theirs.tile_px == 0                                   # auto tile: diffusers keeps its own
    assert names.index("diffusers bf16 tiled") == names.index(f"vaeprec fp16 {label}") + 1
    assert "diffusers bf16 tiled" not in [v.name for v in _plan(H100, "--tiling", tiling, "--no-baseline")[1]]
    assert not any(v.is_tiled for v in _plan(H100, "--tiling", "off")[1])


def test_tf32_flag_picks_the_fp32_rows_and_the_baseline():
    _, variants = _plan(H100, "--tf32", "off")
    assert [v.name for v in variants][:1] == ["diffusers fp32 (strict)"]
    assert cli.baseline_of(variants) == "diffusers fp32 (strict)"
    assert cli.baseline_of(_plan(H100, "--skip-fp32-timing")[1]) is None


def test_tf32_is_set_for_the_body_and_restored():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
        for allowed in (True, False):
            with runner.tf32(torch.device("cuda"), allowed):
                assert torch.backends.cudnn.allow_tf32 is allowed
                assert torch.backends.cuda.matmul.allow_tf32 is allowed
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, False)
        with pytest.raises(RuntimeError):
            with runner.tf32(torch.device("cuda"), False):
                raise RuntimeError("a row failed")
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


GB = 10**9


def test_sizes_that_fit_only_tiled_keep_their_tiled_rows():
    vae = make_vae(**SMALL)       # 32 channels at full resolution
    _, variants = _plan(H100, "--tiling", "on", "--sizes", "1024,16384")
    fit = footprint.plan(vae, torch.device("cuda"), [1024, 16384], 1, variants, ["decode", "encode"],
                         free_bytes=60 * GB, host_free_bytes=200 * GB)
    assert not any(size == 1024 for size, _ in fit.skipped)
    left_out = {name for size, name in fit.skipped if size == 16384}
    assert left_out == {"diffusers fp32 (TF32)", "diffusers fp32 (strict)", "diffusers bf16", "vaeprec auto (mixed)",
                        "vaeprec bf16"}
    assert fit.tiled_reference == {16384} and "16384px" in fit.notes[0]


def test_sizes_that_cannot_fit_are_refused_in_one_line():
    vae = make_vae(**SMALL)
    _, variants = _plan(H100, "--sizes", "16384", "--tiling", "off")
    with pytest.raises(footprint.DoesNotFit, match="--tiling on"):
        footprint.plan(vae, torch.device("cuda"), [16384], 1, variants, ["decode"], free_bytes=60 * GB,
                       host_free_bytes=200 * GB)
    _, variants = _plan(CPU, "--sizes", "4096")
    with pytest.raises(footprint.DoesNotFit, match="host memory"):
        footprint.plan(vae, torch.device("cpu"), [4096], 64, variants, ["decode"], free_bytes=8 * GB,
                       host_free_bytes=8 * GB)
