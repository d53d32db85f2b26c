"""A forced bf16/fp16 that the device only emulates (orders of magnitude slower) runs as fp32, said once in
the log and in every infotext, unless the user turns the protection off. The device is a CPU without
native 16-bit arithmetic here whatever this machine's CPU has, so the test is the same everywhere."""
import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standins.fixtures import a1111, dtypes_of  # noqa: E402,F401

from lib_vaeprec import engine as engine_module  # noqa: E402
from lib_vaeprec.device_caps import DeviceCaps  # noqa: E402
from lib_vaeprec.engine import VaeEngine  # noqa: E402
from lib_vaeprec.infotext import format_params  # noqa: E402
from lib_vaeprec.options import VaeOptions  # noqa: E402
from lib_vaeprec.stats import GenerationStats  # noqa: E402


@pytest.fixture
def cpu_without_16bit(monkeypatch):
    monkeypatch.setattr(engine_module, "caps_of", lambda device: DeviceCaps("cpu", "cpu"))
    engine_module._warned.clear()


def _warnings(caplog, text):
    return [r for r in caplog.records if text in r.getMessage()]


def test_forced_fp16_runs_as_fp32_and_says_so_once(tiny_vae, cpu_without_16bit, caplog):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp16")).attach()
    gen = GenerationStats()
    engine.on_call = gen.add
    with caplog.at_level(logging.WARNING, logger="vae_precision"), torch.no_grad():
        tiny_vae.decode(torch.randn(1, 4, 8, 8))
        tiny_vae.decode(torch.randn(1, 4, 8, 8))
    assert dtypes_of(tiny_vae) == {torch.float32}
    assert [c.dtype for c in gen.calls] == ["fp32", "fp32"] and gen.calls[0].emulated == "fp16"
    assert len(_warnings(caplog, "running fp32 instead")) == 1
    assert format_params(engine.options, gen)["VAE dtype"] == "fp16 (fp32 as cpu emulates fp16)"
    engine.detach()


def test_the_protection_turned_off_forces_the_dtype(tiny_vae, cpu_without_16bit, caplog):
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False)).attach()
    with caplog.at_level(logging.WARNING, logger="vae_precision"), torch.no_grad():
        tiny_vae.decode(torch.randn(1, 4, 4, 4))
    assert dtypes_of(tiny_vae) == {torch.bfloat16} and engine.last_call.dtype == "bf16"
    assert not engine.last_call.emulated and len(_warnings(caplog, "much slower")) == 1
    engine.detach()


def test_in_the_web_ui_by_setting_and_override(a1111, cpu_without_16bit, caplog):
    env = a1111.start(load_model=False)
    env.opts.set("vae_precision_dtype", "fp16")
    devices = env.mod("modules.devices")
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        env.mod("modules.sd_models").load_model()
        assert dtypes_of(env.vae_module()) == {torch.float32} and devices.dtype_vae == torch.float32
        _, first = env.render()
        _, second = env.render()
    for res in (first, second):
        assert env.infotext(res.infotexts[0])["VAE dtype"] == "fp16 (fp32 as cpu emulates fp16)"
    assert len(_warnings(caplog, "running fp32 instead")) == 1
    _, forced = env.render(override_settings={"vae_precision_avoid_emulated": False})
    assert env.infotext(forced.infotexts[0])["VAE dtype"] == "fp16"
    assert devices.dtype_vae == torch.float32                              # the settings again afterwards
