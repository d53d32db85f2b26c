import pytest
import torch

from conftest import assert_same, snapshot
from lib_vaeprec.engine import VaeEngine
from lib_vaeprec.options import VaeOptions

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="offload between devices needs a CUDA GPU")


@pytest.mark.parametrize("mode", ["sequential", "cpu", "after_use"])
def test_offload_modes_give_the_same_image(tiny_vae, mode):
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        reference = tiny_vae.decode(z).sample
    before = snapshot(tiny_vae)
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="fp32", offload=mode, fused_upsample=False)).attach()
    with torch.no_grad():
        image = tiny_vae.decode(z).sample
    assert torch.equal(image, reference)
    engine.detach()
    assert_same(tiny_vae, before)
    assert not any(m._forward_pre_hooks for m in tiny_vae.modules())


@gpu
def test_after_use_leaves_no_weights_on_the_gpu(tiny_vae):
    tiny_vae.cuda()
    engine = VaeEngine(tiny_vae, VaeOptions(dtype="bf16", avoid_emulated=False, offload="after_use")).attach()
    with torch.no_grad():
        tiny_vae.decode(torch.randn(1, 4, 8, 8, device="cuda"))
    assert all(p.device.type == "cpu" for p in tiny_vae.parameters())
    engine.detach()
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in tiny_vae.parameters())
