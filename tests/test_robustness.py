"""Hostile but realistic use: several threads on one VAE, another wrapper put over ours, NaN latents from
the sampler, a VAE that stays non-finite, gradients, objects that are not VAEs, calls that raise, observers
that raise."""
import logging
import threading

import pytest
import torch

import lib_vaeprec
from conftest import assert_same, make_vae, psnr, snapshot
from lib_vaeprec import memory
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.hosts.adapter import HostAdapter
from lib_vaeprec.infotext import KEY_NONFINITE, format_params
from lib_vaeprec.stats import GenerationStats


def latents(batch=2, size=16, seed=0):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


def _in_threads(work, count=2):
    errors = []

    def run():
        try:
            work()
        except Exception as error:  # noqa: BLE001 - every failure is the test's finding
            errors.append(error)
    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


def test_two_threads_decoding_tiled_through_one_vae():
    vae = make_vae()
    z = latents()
    with torch.no_grad():
        reference = vae.decode(z).sample
    lib_vaeprec.apply(vae, dtype="fp32", tiling="always", tile_size=64)
    results = []

    def work():
        with torch.no_grad():
            for _ in range(4):
                results.append(vae.decode(z).sample)
    errors = _in_threads(work)
    lib_vaeprec.remove(vae)
    assert not errors and len(results) == 8
    assert all(torch.allclose(r, reference, atol=1e-4) for r in results)
    assert not [m for m in vae.modules() if "forward" in m.__dict__]      # no forward left behind
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, reference)


def test_a_nan_retry_in_one_thread_does_not_recast_under_the_other():
    """bf16 (forced, on a tiny VAE: this CPU may emulate it): one thread's batch overflows and is redone,
    which recasts the shared weights; the other thread's calls never see the other dtype."""
    from test_guard import overflowing_vae
    vae = overflowing_vae()
    lib_vaeprec.apply(vae, dtype="fp16", avoid_emulated=False, tiling="off")
    big, small = latents(batch=1, size=8) * 300, latents(batch=1, size=8)

    def work_with(z):
        def work():
            with torch.no_grad():
                for _ in range(3):
                    assert torch.isfinite(vae.decode(z).sample).all()
        return work
    errors = []
    threads = [threading.Thread(target=lambda w=w: _collect(w, errors)) for w in (work_with(big), work_with(small))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    lib_vaeprec.remove(vae)
    assert not errors


def _collect(work, errors):
    try:
        work()
    except Exception as error:  # noqa: BLE001
        errors.append(error)


def test_remove_under_another_wrapper_restores_the_weights_and_keeps_the_wrapper():
    vae = make_vae()
    before = snapshot(vae)
    lib_vaeprec.apply(vae, dtype="bf16", avoid_emulated=False, tiling="off")
    with torch.no_grad():
        vae.decode(latents(batch=1, size=8))
    ours, seen = vae.decode, []

    def theirs(z, *args, **kwargs):
        seen.append(z.shape)
        return ours(z, *args, **kwargs)
    vae.decode = theirs
    lib_vaeprec.remove(vae)
    assert_same(vae, before)                      # every weight back in fp32, bit for bit
    with torch.no_grad():
        image = vae.decode(latents(batch=1, size=8)).sample
    assert seen and image.dtype == torch.float32
    assert lib_vaeprec.engine_of(vae) is None


def test_a_latent_that_is_already_nan_is_the_samplers_and_is_not_redone(caplog):
    vae = make_vae()
    engine = lib_vaeprec.apply(vae, dtype="fp32", tiling="off")
    z = latents()
    z[1, 0, 3, 3] = float("nan")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
        image = vae.decode(z).sample
    stats = engine.last_call
    assert stats.nonfinite_input == 1 and not stats.fallbacks and stats.nonfinite_left == 0
    assert torch.isfinite(image[0]).all()
    assert "1 of 2 decode inputs are already NaN/Inf" in caplog.text
    gen = GenerationStats([stats])
    assert format_params(engine.options, gen)[KEY_NONFINITE] == "1 of 2 in the latent"
    lib_vaeprec.remove(vae)


def test_an_image_still_nan_in_fp32_is_reported(caplog):
    vae = make_vae()
    with torch.no_grad():
        vae.decoder.conv_out.bias[0] = float("inf")
    engine = lib_vaeprec.apply(vae, dtype="fp32", tiling="off")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
        vae.decode(latents())
    assert engine.last_call.nonfinite_left == 2
    assert "2 of 2 decode outputs are NaN/Inf in fp32, the safest dtype" in caplog.text
    assert format_params(engine.options, GenerationStats([engine.last_call]))[KEY_NONFINITE] == "2 of 2"
    lib_vaeprec.remove(vae)


def test_gradients_reach_the_weights_when_asked_for(caplog):
    """Training through the VAE: with grad mode on and weights that require grad, the call runs with
    autograd on the host's own weights, and says so once."""
    vae = make_vae()
    before = snapshot(vae)
    lib_vaeprec.apply(vae, dtype="fp32", tiling="always")
    z = latents(batch=1, size=8).requires_grad_()
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        image = vae.decode(z).sample
    image.mean().backward()
    assert z.grad is not None and vae.decoder.conv_out.weight.grad is not None
    assert vae.decoder.conv_out.weight.grad.dtype == torch.float32
    assert "runs with autograd" in caplog.text
    with torch.no_grad():
        vae.decode(latents(batch=1, size=8))           # and VAE Precision's own path again without
    lib_vaeprec.remove(vae)
    for p in vae.parameters():
        p.grad = None
    assert_same(vae, before)


def test_apply_refuses_what_is_not_a_vae():
    class Pretender:
        def decode(self, z):
            return z

        def encode(self, x):
            return x
    with pytest.raises(TypeError, match="neither a pipeline with a .vae nor a VAE"):
        lib_vaeprec.apply(Pretender())


def test_on_call_none_clears_the_callback_and_leaving_it_out_keeps_it(tiny_vae):
    calls = []
    engine = lib_vaeprec.apply(tiny_vae, dtype="fp32", on_call=calls.append)
    lib_vaeprec.apply(tiny_vae, dtype="fp32")
    assert engine.on_call is not None
    lib_vaeprec.apply(tiny_vae, dtype="fp32", on_call=None)
    with torch.no_grad():
        tiny_vae.decode(latents(batch=1, size=8))
    assert engine.on_call is None and calls == []
    lib_vaeprec.remove(tiny_vae)


def test_last_call_is_cleared_by_a_call_that_raised(tiny_vae):
    engine = lib_vaeprec.apply(tiny_vae, dtype="fp32", tiling="off")
    with torch.no_grad():
        tiny_vae.decode(latents(batch=1, size=8))
    assert engine.last_call is not None

    def fails(module, args):
        raise RuntimeError("a host error")
    handle = tiny_vae.decoder.conv_in.register_forward_pre_hook(fails)
    with pytest.raises(RuntimeError, match="a host error"), torch.no_grad():
        tiny_vae.decode(latents(batch=1, size=8))
    handle.remove()
    assert engine.last_call is None
    lib_vaeprec.remove(tiny_vae)


def test_mixed_with_tiling_decodes(monkeypatch):
    """`mixed` with tiling crashed every tiled decode (the runner took its dtype from a norm weight)."""
    from lib_vaeprec import engine as engine_module
    from lib_vaeprec.device_caps import DeviceCaps
    monkeypatch.setattr(engine_module, "caps_of", lambda d: DeviceCaps("cpu", native_bf16=True, native_fp16=True))
    vae = make_vae()
    lib_vaeprec.apply(vae, dtype="mixed", tiling="always")
    with torch.no_grad():
        first = vae.decode(torch.randn(1, 4, 8, 8)).sample
        second = vae.decode(torch.randn(1, 4, 8, 8)).sample
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    lib_vaeprec.remove(vae)


def test_a_vae_the_host_drops_is_freed_with_its_engine():
    """Forge builds a new VAE for every checkpoint and drops the old one without detaching."""
    import gc
    import weakref
    vae = make_vae()
    lib_vaeprec.apply(vae, dtype="fp32", tiling="off")
    with torch.no_grad():
        vae.decode(latents(batch=1, size=8))
    gone = weakref.ref(vae)
    del vae
    gc.collect()
    assert gone() is None


def test_an_on_call_that_raises_costs_no_image_and_is_logged_once(caplog):
    vae = make_vae()
    with torch.no_grad():
        reference = vae.decode(latents(size=8)).sample

    def observer(stats):
        raise ValueError("the observer's own bug\nsecond line")
    engine = lib_vaeprec.apply(vae, dtype="fp32", tiling="off", on_call=observer)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
        first = vae.decode(latents(size=8)).sample
        second = vae.decode(latents(size=8)).sample
    assert torch.equal(first, reference) and torch.equal(second, reference)
    assert engine.last_call is not None
    lines = [r.getMessage() for r in caplog.records if "observer" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "ValueError" in lines[0]
    lib_vaeprec.remove(vae)


def test_a_web_uis_stats_listener_that_raises_costs_no_image(caplog):
    """The web UIs' per-render stats reach the infotext through the same path as on_call."""
    class Render:
        def record(self, call):
            raise RuntimeError("infotext bookkeeping failed")
    adapter, render = HostAdapter(), Render()
    adapter.listen(render.record)
    vae = make_vae()
    VaeEngine(vae, lib_vaeprec.VaeOptions(dtype="fp32", tiling="off"), on_call=adapter._dispatch).attach()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
        image = vae.decode(latents(size=8)).sample
    assert torch.isfinite(image).all() and "infotext bookkeeping failed" in caplog.text


def test_unreadable_host_memory_plans_conservatively(monkeypatch, caplog):
    psutil = pytest.importorskip("psutil")

    def sandboxed():
        raise PermissionError("/proc/meminfo: permission denied")
    monkeypatch.setattr(psutil, "virtual_memory", sandboxed)
    monkeypatch.setattr(psutil, "Process", lambda *a: (_ for _ in ()).throw(PermissionError("no /proc")))
    assert memory.host_available_bytes() == memory.UNKNOWN_HOST_BYTES
    vae = make_vae()
    with torch.no_grad():
        reference = vae.decode(latents(size=8)).sample
    engine = lib_vaeprec.apply(vae, dtype="fp32", tiling="auto")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="vae_precision"):
        image = vae.decode(latents(size=8)).sample
        vae.decode(latents(size=8))
    assert torch.allclose(image, reference, atol=1e-4) and engine.last_call.ram_bytes is None
    assert caplog.text.count("host memory") == 1
    lib_vaeprec.remove(vae)




def test_host_memory_read_as_zero_is_unknown(monkeypatch):
    """A sandbox's psutil can read 0 bytes available: no running process has that, so it is no reading."""
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Reading", (), {"available": 0})())
    assert memory.host_available_bytes() == memory.UNKNOWN_HOST_BYTES


def test_a_nan_latent_with_gradients_on_is_reported(caplog):
    vae = make_vae()
    engine = lib_vaeprec.apply(vae, dtype="fp32", tiling="off")
    z = latents(size=8)
    z[1, 0, 3, 3] = float("nan")
    z.requires_grad_()
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        vae.decode(z)
    stats = engine.last_call
    assert stats.nonfinite_input == 1 and stats.nonfinite_left == 0
    assert "1 of 2 decode inputs are already NaN/Inf" in caplog.text
    assert GenerationStats([stats]).nonfinite() == (0, 1, 2)
    lib_vaeprec.remove(vae)


def test_an_output_still_nan_with_gradients_on_is_reported(caplog):
    vae = make_vae()
    with torch.no_grad():
        vae.decoder.conv_out.bias[0] = float("inf")
    vae.requires_grad_(True)
    engine = lib_vaeprec.apply(vae, dtype="fp32", tiling="off")
    with caplog.at_level(logging.WARNING, logger="vae_precision"):
        vae.decode(latents(size=8))
    assert engine.last_call.nonfinite_left == 2 and "2 of 2 decode outputs are NaN/Inf" in caplog.text
    lib_vaeprec.remove(vae)
