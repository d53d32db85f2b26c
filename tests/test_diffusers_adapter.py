import logging

import torch
from diffusers import DiffusionPipeline

import lib_vaeprec
from conftest import assert_same, snapshot


class TinyPipeline(DiffusionPipeline):
    """The smallest real diffusers pipeline: registered modules, no sampling."""

    def __init__(self, vae):
        super().__init__()
        self.register_modules(vae=vae)


def test_apply_and_remove_on_a_pipeline(tiny_vae):
    pipe = TinyPipeline(tiny_vae)
    before = snapshot(tiny_vae)
    calls = []
    engine = lib_vaeprec.apply(pipe, dtype="bf16", avoid_emulated=False, tiling="off", on_call=calls.append)
    with torch.no_grad():
        image = pipe.vae.decode(torch.randn(1, 4, 8, 8)).sample
    assert image.dtype == torch.float32 and calls[0].dtype == "bf16"
    assert lib_vaeprec.apply(pipe, dtype="fp32") is engine        # reconfigures, never stacks
    lib_vaeprec.remove(pipe)
    assert_same(tiny_vae, before)
    assert "decode" not in tiny_vae.__dict__


def test_apply_to_a_bare_vae_with_bad_value_keeps_going(tiny_vae, caplog):
    engine = lib_vaeprec.apply(tiny_vae, dtype="bf17")
    assert engine.options.dtype == "auto" and "bf17" in caplog.text
    lib_vaeprec.remove(tiny_vae)


def test_apply_with_an_overflowing_tile_size_warns_and_goes_on(tiny_vae, caplog):
    for value in (float("inf"), "1e999", 10 ** 400, float("nan")):
        engine = lib_vaeprec.apply(tiny_vae, tiling="always", tile_size=value)
        assert engine.options.tile_size == 0 and engine.options.tiling == "always"
    assert caplog.text.count("tile_size") == 4 and "using 'auto' (the default) instead" in caplog.text
    lib_vaeprec.remove(tiny_vae)


def test_apply_with_some_keywords_keeps_every_other_option(tiny_vae):
    calls = []
    engine = lib_vaeprec.apply(tiny_vae, dtype="fp32", tiling="always", tile_size=128, on_call=calls.append)
    lib_vaeprec.apply(tiny_vae, on_call=None)
    assert (engine.options.dtype, engine.options.tiling, engine.options.tile_size) == ("fp32", "always", 128)
    lib_vaeprec.apply(tiny_vae, tiling="off")
    assert (engine.options.dtype, engine.options.tiling, engine.options.tile_size) == ("fp32", "off", 128)
    lib_vaeprec.remove(tiny_vae)


def test_a_bad_keyword_on_an_attached_vae_keeps_the_value_it_had(tiny_vae, caplog):
    engine = lib_vaeprec.apply(tiny_vae, dtype="fp32")
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        lib_vaeprec.apply(tiny_vae, dtype="bf17")
    assert engine.options.dtype == "fp32" and "using 'fp32' (as set before) instead" in caplog.text
    lib_vaeprec.remove(tiny_vae)
