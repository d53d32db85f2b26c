import logging

import pytest
import torch

from lib_vaeprec import speed
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.options import VaeOptions

from conftest import assert_same, snapshot


def test_channels_last_gives_the_same_image_and_is_undone(tiny_vae):
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        reference = tiny_vae.decode(z).sample
    before = snapshot(tiny_vae)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32", channels_last=True)).attach()
    with torch.no_grad():
        image = tiny_vae.decode(z).sample
    assert tiny_vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(image, reference, atol=1e-5)
    engine.detach()
    assert_same(tiny_vae, before)
    assert tiny_vae.decoder.conv_in.weight.is_contiguous()


def test_a_failing_compiler_falls_back_to_eager_once(tiny_vae, monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler")
        return run
    monkeypatch.setattr(speed.torch, "compile", broken_compile)
    monkeypatch.setattr(speed, "_compiled", {})
    coders = speed.CompiledCoders()
    coders.install(tiny_vae)
    z = torch.randn(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        image = tiny_vae.decode(z).sample
        again = tiny_vae.decode(z).sample
    assert torch.equal(image, again) and caplog.text.count("running it eagerly") == 1
    coders.remove()
    assert "forward" not in tiny_vae.decoder.__dict__


def test_compile_is_only_used_on_cuda(tiny_vae):
    VaeEngine(tiny_vae, VaeOptions(dtype="fp32", compile=True)).attach()
    with torch.no_grad():
        tiny_vae.decode(torch.randn(1, 4, 8, 8))
    assert "forward" not in tiny_vae.decoder.__dict__


def test_cudnn_autotuning_is_on_only_during_the_call(tiny_vae):
    seen = []
    original = tiny_vae.decoder.forward

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return original(*args, **kwargs)
    tiny_vae.decoder.forward = spy
    before = torch.backends.cudnn.benchmark
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32", cudnn_benchmark=True)).attach()
    with torch.no_grad():
        tiny_vae.decode(torch.randn(1, 4, 4, 4))
    engine.detach()
    assert seen == [True] and torch.backends.cudnn.benchmark == before
