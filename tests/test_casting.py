import torch

from conftest import assert_same, snapshot
from lib_vaeprec.casting import WeightCast


def test_cast_and_restore_is_bitwise(tiny_vae):
    before = snapshot(tiny_vae)
    cast = WeightCast(tiny_vae)
    cast.cast(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in tiny_vae.parameters())
    cast.restore()
    assert_same(tiny_vae, before)


def test_restore_keeps_parameter_objects(tiny_vae):
    params = list(tiny_vae.parameters())
    cast = WeightCast(tiny_vae)
    cast.cast(torch.float16)
    cast.restore()
    assert all(a is b for a, b in zip(params, tiny_vae.parameters()))


def test_submodules_can_each_have_their_own_dtype(tiny_vae):
    before = snapshot(tiny_vae)
    cast = WeightCast(tiny_vae)
    cast.cast(torch.bfloat16, {"decoder.conv_out": torch.float16, "decoder.mid_block": torch.float32})
    assert tiny_vae.decoder.conv_out.weight.dtype == torch.float16
    assert tiny_vae.decoder.mid_block.resnets[0].conv1.weight.dtype == torch.float32
    assert tiny_vae.decoder.conv_in.weight.dtype == torch.bfloat16
    cast.cast(torch.bfloat16)
    assert tiny_vae.decoder.conv_out.weight.dtype == torch.bfloat16
    cast.restore()
    assert_same(tiny_vae, before)


def test_host_reload_in_place_is_adopted(tiny_vae):
    """A host that loads new weights into the cast module (A1111's VAE dropdown) keeps them."""
    cast = WeightCast(tiny_vae)
    cast.cast(torch.bfloat16)
    new_weights = {k: torch.full_like(v, 0.5, dtype=torch.float32) for k, v in tiny_vae.state_dict().items()}
    tiny_vae.load_state_dict(new_weights)
    tiny_vae.to(torch.float16)          # the host's own dtype after its reload
    after_reload = snapshot(tiny_vae)
    cast.cast(torch.bfloat16)
    cast.restore()
    assert_same(tiny_vae, after_reload)


def test_host_recast_keeps_originals(tiny_vae):
    """A plain .to(dtype) by the host is no new weights: the originals come back bitwise."""
    before = snapshot(tiny_vae)
    cast = WeightCast(tiny_vae)
    cast.cast(torch.bfloat16)
    tiny_vae.to(torch.float16)
    cast.cast(torch.bfloat16)
    cast.restore()
    assert_same(tiny_vae, before)
