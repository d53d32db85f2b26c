import logging

import pytest
import torch

from lib_vaeprec.guard import Fallback
from lib_vaeprec.infotext import format_params, parse_params
from lib_vaeprec.options import VaeOptions, merge
from lib_vaeprec.stats import CallStats, GenerationStats, measure


def _generation():
    gen = GenerationStats()
    gen.add(CallStats("encode", dtype="bf16", seconds=0.12, peak_bytes=2**29, ram_bytes=3 * 2**30))
    gen.add(CallStats("decode", dtype="bf16", seconds=0.41, peak_bytes=2**31, ram_bytes=5 * 2**30, tiles=8, tile_px=512,
                      bands=4, band_px=(1024, 256), samples=4, fallbacks=[Fallback(torch.bfloat16, torch.float32, 1, 4)]))
    return gen


def test_format_has_every_field():
    params = format_params(VaeOptions(dtype="auto", tiling="auto", tile_size=512, offload="after_use"), _generation())
    assert params == {
        "VAE dtype": "auto (bf16/fp32)", "VAE decode": "0.41 s", "VAE encode": "0.12 s", "VAE peak VRAM": "2.00 GiB",
        "VAE RAM": "5.00 GiB", "VAE tiling": "auto (4 bands of 1024x256 px)", "VAE tile size": "512",
        "VAE offload": "offload to CPU after use", "VAE fallback": "bf16->fp32 (1 of 4)",
    }


def test_round_trip_restores_choices_not_measurements():
    options = VaeOptions(dtype="mixed", tiling="always", tile_size=768, offload="sequential")
    restored = parse_params(format_params(options, _generation()))
    assert restored == {"dtype": "mixed", "tiling": "always", "tile_size": 768, "offload": "sequential"}


def test_malformed_values_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        restored = parse_params({"VAE dtype": "bf17", "VAE tiling": "sometimes", "VAE tile size": "0x",
                                 "VAE offload": "keep on GPU", "VAE decode": "garbage"})
    assert restored == {"offload": "keep"}
    assert "bf17" in caplog.text and "sometimes" in caplog.text


def test_merge_bad_override_keeps_the_next_levels_value(caplog):
    with caplog.at_level(logging.WARNING):
        options = merge(VaeOptions(dtype="fp16", tile_size=512), {"dtype": "bf17", "tile_size": "12x",
                                                                  "tiling": "use settings"},
                        source="accordion", base_source="the settings")
    assert options.dtype == "fp16" and options.tiling == "auto" and options.tile_size == 512
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "VAE Precision: accordion dtype 'bf17' is not valid (expected one of host default, auto, bf16, fp16, "
        "fp32, mixed); using 'fp16' (the settings) instead",
        "VAE Precision: accordion tile_size '12x' is not valid (expected auto (0) or 64 to 8192 pixels); "
        "using '512' (the settings) instead"]
    assert "could not convert" not in caplog.text          # never Python's own message


def test_tile_size_zero_means_auto_and_small_is_rejected(caplog):
    assert merge(VaeOptions(), {"tile_size": "0"}).tile_size == 0
    with caplog.at_level(logging.WARNING):
        assert merge(VaeOptions(tile_size=512), {"tile_size": 3}).tile_size == 512
    assert "tile_size" in caplog.text


def test_measure_records_time_and_ram():
    stats = CallStats("decode")
    with measure(stats, "cpu"):
        torch.ones(1000).sum()
    assert stats.seconds > 0 and stats.ram_bytes > 0 and stats.peak_bytes is None


# ----- the infotext says what ran -----

def _one_call(**fields):
    gen = GenerationStats()
    gen.add(CallStats("decode", **fields))
    return gen


FP16, BF16, FP32 = torch.float16, torch.bfloat16, torch.float32


@pytest.mark.parametrize("fallbacks,written", [
    ([], "fp16"),
    ([Fallback(FP16, BF16, 1, 1)], "fp16 (bf16)"),                                 # every image redone
    ([Fallback(FP16, BF16, 1, 2)], "fp16 (bf16/fp16)"),                            # one of two
    ([Fallback(FP16, BF16, 2, 2), Fallback(BF16, FP32, 2, 2)], "fp16 (fp32)"),
    ([Fallback(FP16, BF16, 2, 2), Fallback(BF16, FP32, 1, 2)], "fp16 (bf16/fp32)"),
])
def test_dtype_names_the_dtypes_that_made_the_pixels(fallbacks, written):
    gen = _one_call(dtype="fp16", samples=fallbacks[0].total if fallbacks else 1, fallbacks=fallbacks)
    assert format_params(VaeOptions(dtype="fp16"), gen)["VAE dtype"] == written


def test_dtype_says_when_an_emulated_dtype_was_avoided():
    gen = _one_call(dtype="fp32", device="cpu", emulated="fp16")
    assert format_params(VaeOptions(dtype="fp16"), gen)["VAE dtype"] == "fp16 (fp32 as cpu emulates fp16)"


@pytest.mark.parametrize("options_dtype,call,written", [
    ("fp32", dict(dtype="fp32", rounded_weights=("bf16",)), "fp32 (on bf16-rounded weights)"),
    ("auto", dict(dtype="fp32", rounded_weights=("fp16",)), "auto (fp32 on fp16-rounded weights)"),
    ("bf16", dict(dtype="bf16", rounded_weights=("bf16",)), "bf16"),          # the weights' own dtype
    ("mixed", dict(dtype="mixed", blocks="fp16 3/3 blocks", rounded_weights=("bf16",)),
     "mixed (fp16 3/3 blocks on bf16-rounded weights)"),
])
def test_dtype_says_when_the_weights_were_rounded_to_another_dtype(options_dtype, call, written):
    """Pixels of one dtype computed from weights another, narrower dtype rounded (a VAE the web UI loaded
    in bf16 while the extension did not pick the dtype) are not that dtype's pixels."""
    gen = _one_call(**call)
    assert format_params(VaeOptions(dtype=options_dtype), gen)["VAE dtype"] == written


@pytest.mark.parametrize("weights,reported", [(torch.bfloat16, ("bf16",)), (torch.float16, ("fp16",)),
                                                      (torch.float32, ())])
def test_the_engine_reports_weights_rounded_before_it_was_applied(tiny_vae, weights, reported):
    from lib_vaeprec.engine import VaeEngine
    tiny_vae.to(weights)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32")).attach()
    try:
        with torch.no_grad():
            tiny_vae.decode(torch.randn(1, 4, 8, 8))
        assert engine.last_call.rounded_weights == reported
    finally:
        engine.detach()


@pytest.mark.parametrize("offload,devices,written", [
    ("keep", ["cpu"], "keep on GPU (ran on cpu)"),
    ("keep", ["cuda"], "keep on GPU"),
    ("after_use", ["cpu", "cuda"], "offload to CPU after use (ran on cpu/cuda)"),
    ("cpu", ["cpu"], "decode on CPU"),
])
def test_offload_names_the_cpu_when_the_calls_ran_there(offload, devices, written):
    gen = GenerationStats()
    for device in devices:
        gen.add(CallStats("decode", dtype="fp32", device=device))
    assert format_params(VaeOptions(offload=offload), gen)["VAE offload"] == written


@pytest.mark.parametrize("tiles,written", [(0, "always"), (1, "always"), (2, "always (2 bands of 512x256 px)")])
def test_tiles_only_when_the_call_was_split(tiles, written):
    gen = _one_call(dtype="fp32", tiles=tiles, tile_px=512 if tiles else 0, bands=tiles,
                    band_px=(512, 256) if tiles else ())
    assert format_params(VaeOptions(tiling="always"), gen)["VAE tiling"] == written


def test_a_small_image_fits_one_tile_and_says_so(small_vae):
    """A 64x64 image with 512 px tiles: the tiled runner runs it in one piece, which is no tiling at all."""
    from lib_vaeprec.engine import VaeEngine
    engine = VaeEngine(small_vae, VaeOptions(dtype="fp32", tiling="always", tile_size=512)).attach()
    gen = GenerationStats()
    engine.on_call = gen.add
    with torch.no_grad():
        small_vae.decode(torch.randn(1, 4, 8, 8))
    engine.detach()
    assert gen.calls[0].tiles == 1 and gen.calls[0].device == "cpu"
    params = format_params(engine.options, gen)
    assert params["VAE tiling"] == "always" and params["VAE offload"] == "keep on GPU (ran on cpu)"


def test_the_new_formats_paste_back_as_the_choices():
    pasted = parse_params({"VAE dtype": "fp16 (fp32 as cpu emulates fp16)", "VAE tiling": "always",
                           "VAE offload": "keep on GPU (ran on cpu/cuda)", "VAE tile size": "512"})
    assert pasted == {"dtype": "fp16", "tiling": "always", "offload": "keep", "tile_size": 512}
    assert parse_params({"VAE dtype": "fp16 (bf16/fp16)", "VAE tiling": "auto (2 tiles of 64 px after OOM)"}) \
        == {"dtype": "fp16", "tiling": "auto"}


# ----- values that overflow or go on and on -----

def _short_id(value):
    return f"{type(value).__name__}-{value.bit_length() if type(value) is int else str(value)[:8]}"


@pytest.mark.parametrize("value", ["inf", "1e999", "nan", "-inf", "9" * 400, float("inf"), float("-inf"), 10 ** 400,
                                   10 ** 5000, True], ids=_short_id)
def test_overflowing_tile_sizes_are_bad_values_like_any_other(value, caplog):
    with caplog.at_level(logging.WARNING):
        assert merge(VaeOptions(tile_size=256), {"tile_size": value}).tile_size == 256
    assert len(caplog.records) == 1 and "tile_size" in caplog.text
    if isinstance(value, str):                      # infotext values are text
        with caplog.at_level(logging.WARNING):
            assert parse_params({"VAE tile size": value, "VAE tiling": "always"}) == {"tiling": "always"}
        assert len(caplog.records) == 2


def test_huge_numbers_for_on_off_and_choices_are_bad_values(caplog):
    with caplog.at_level(logging.WARNING):
        options = merge(VaeOptions(), {"enabled": 10 ** 5000, "nan_fallback": float("nan"), "dtype": 1e999,
                                       "offload": float("inf")})
    assert options == VaeOptions()
    assert len(caplog.records) == 4


def test_tile_size_limits_are_one_set():
    from lib_vaeprec.hosts.settings import SPECS
    from lib_vaeprec.options import MAX_TILE_PX, MIN_TILE_PX, TILE_PX_STEP
    slider = next(spec for spec in SPECS if spec.name == "tile_size").args
    assert slider["minimum"] == 0 and slider["maximum"] == MAX_TILE_PX and MIN_TILE_PX % slider["step"] == 0
    assert merge(VaeOptions(), {"tile_size": MIN_TILE_PX}).tile_size == MIN_TILE_PX
    assert merge(VaeOptions(), {"tile_size": MAX_TILE_PX}).tile_size == MAX_TILE_PX
    assert merge(VaeOptions(), {"tile_size": 515}).tile_size == 515 - 515 % TILE_PX_STEP
    assert merge(VaeOptions(), {"tile_size": MAX_TILE_PX + 1}).tile_size == 0
    assert merge(VaeOptions(), {"tile_size": MIN_TILE_PX - 1}).tile_size == 0


def test_overlong_infotext_values_are_refused(caplog):
    with caplog.at_level(logging.WARNING):
        assert parse_params({"VAE dtype": "bf16" + "( )" * 13332, "VAE tiling": "off"}) == {"tiling": "off"}
    assert len(caplog.records) == 1 and "not restored" in caplog.text


@pytest.mark.parametrize("value,restored", [
    ("always (3 tiles of 64 px)", {"tiling": "always"}), ("  always  (x) (y)  ", {"tiling": "always"}),
    ("(always)", {}), ("always (", {}), ("always)", {})])
def test_the_detail_in_parentheses_is_dropped(value, restored):
    assert parse_params({"VAE tiling": value}) == restored


def test_strict_parsing_for_callers_that_refuse_bad_input():
    from lib_vaeprec.options import BadValue, parse_strict
    assert parse_strict("tile_size", "512px") == 512
    for value in ("inf", "1e999", 10 ** 400, "12x", 32):
        with pytest.raises(BadValue, match="expected auto"):
            parse_strict("tile_size", value)


@pytest.mark.parametrize("images", [None, 4])
def test_non_finite_counts_the_images_of_the_generation(images):
    """One encode of 4 images (img2img) and four 1-image decodes (A1111 decodes one at a time), one black."""
    gen = GenerationStats()
    gen.add(CallStats("encode", dtype="fp32", samples=4))
    for i in range(4):
        gen.add(CallStats("decode", dtype="fp32", samples=1, nonfinite_left=int(i == 2)))
    assert format_params(VaeOptions(dtype="fp32"), gen, images=images)["VAE non-finite"] == "1 of 4"


def test_non_finite_of_a_hires_generation_counts_its_final_images():
    """The first pass's 2 decodes, the hires encode of 2, the final 2 decodes: 2 images."""
    gen = GenerationStats()
    for kind, samples, given in (("decode", 2, 0), ("encode", 2, 0), ("decode", 1, 1), ("decode", 1, 0)):
        gen.add(CallStats(kind, dtype="fp32", samples=samples, nonfinite_input=given))
    assert format_params(VaeOptions(dtype="fp32"), gen, images=2)["VAE non-finite"] == "1 of 2 in the latent"


@pytest.mark.parametrize("tile_size,written", [(64, "always (4 bands of 128x32 px)"), (128, "always")])
def test_the_tiling_report_is_the_images_bands_at_the_tile_size_set(tile_size, written):
    """The SD decoder's full resolution has 128 channels (and 256 before its last up block): with 256 px
    tiles a 512x512 render said "8 tiles of 256 px", counting the 256-channel stage; the user set a quarter
    of the image. Here (128 channels at full resolution, x2), 64 px tiles cut a 128x128 image into 4 bands,
    and 128 px tiles keep it whole."""
    from conftest import make_vae
    from lib_vaeprec.engine import VaeEngine
    vae = make_vae(block_out_channels=(128, 32), norm_num_groups=32)
    engine = VaeEngine(vae, VaeOptions(dtype="fp32", tiling="always", tile_size=tile_size)).attach()
    gen = GenerationStats()
    engine.on_call = gen.add
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 64, 64))
    engine.detach()
    assert format_params(engine.options, gen)["VAE tiling"] == written



def test_the_kernels_field_says_where_the_triton_kernels_ran():
    gen = GenerationStats()
    gen.add(CallStats(kind="decode", dtype="mixed", kernels="triton"))
    assert format_params(VaeOptions(), gen)["VAE kernels"] == "triton"
    plain = GenerationStats()
    plain.add(CallStats(kind="decode", dtype="bf16"))
    assert "VAE kernels" not in format_params(VaeOptions(), plain)
    assert parse_params(format_params(VaeOptions(), gen)) == parse_params(format_params(VaeOptions(), plain))


def test_a_batch_without_the_kernels_drops_the_previous_batchs_field():
    from types import SimpleNamespace

    from lib_vaeprec.hosts.session import RenderSession
    session, p = RenderSession(), SimpleNamespace(extra_generation_params={})
    session.options = VaeOptions()
    session.record(CallStats(kind="decode", dtype="mixed", kernels="triton"))
    assert session.write_infotext(p)["VAE kernels"] == "triton"
    session.record(CallStats(kind="decode", dtype="bf16"))
    session.write_infotext(p)
    assert "VAE kernels" not in p.extra_generation_params
