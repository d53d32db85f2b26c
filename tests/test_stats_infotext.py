import logging

import torch

from lib_vaeprec.guard import Fallback
from lib_vaeprec.infotext import format_params, parse_params
from lib_vaeprec.options import VaeOptions, merge
from lib_vaeprec.stats import CallStats, GenerationStats, measure


def _generation():
    gen = GenerationStats()
    gen.add(CallStats("encode", dtype="bf16", seconds=0.12, peak_bytes=2**29, ram_bytes=3 * 2**30))
    gen.add(CallStats("decode", dtype="bf16", seconds=0.41, peak_bytes=2**31, ram_bytes=5 * 2**30, tiles=4, tile_px=512,
                      fallbacks=[Fallback(torch.float16, torch.float32, 1, 4)]))
    return gen


def test_format_has_every_field():
    params = format_params(VaeOptions(dtype="auto", tiling="auto", tile_size=512, offload="after_use"), _generation())
    assert params == {
        "VAE dtype": "auto (bf16)", "VAE decode": "0.41 s", "VAE encode": "0.12 s", "VAE peak VRAM": "2.00 GiB",
        "VAE RAM": "5.00 GiB", "VAE tiling": "auto (4 tiles of 512 px)", "VAE tile size": "512",
        "VAE offload": "offload to CPU after use", "VAE fallback": "fp16->fp32 (1 of 4)",
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


def test_merge_bad_override_uses_default(caplog):
    with caplog.at_level(logging.WARNING):
        options = merge(VaeOptions(dtype="fp16"), {"dtype": "bf17", "tile_size": 0, "tiling": "use settings"})
    assert options.dtype == "auto" and options.tiling == "auto" and options.tile_size == 0
    assert "bf17" in caplog.text


def test_tile_size_zero_means_auto_and_small_is_rejected(caplog):
    assert merge(VaeOptions(), {"tile_size": "0"}).tile_size == 0
    with caplog.at_level(logging.WARNING):
        assert merge(VaeOptions(tile_size=512), {"tile_size": 3}).tile_size == 0
    assert "tile_size" in caplog.text


def test_measure_records_time_and_ram():
    stats = CallStats("decode")
    with measure(stats, "cpu"):
        torch.ones(1000).sum()
    assert stats.seconds > 0 and stats.ram_bytes > 0 and stats.peak_bytes is None
