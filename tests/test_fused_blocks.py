"""The fused resnet and attention forwards (fused_blocks) compute what the blocks' own forwards do, with
the torch equivalents of the kernels (groupnorm_kernels.reference) here; the Triton kernels themselves
where Triton's CPU interpreter is on (TRITON_INTERPRET=1, slow) and in test_cuda.py on a GPU. They step
aside for hooks, other forwards and time embeddings."""
import os

import pytest
import torch

from conftest import SMALL, make_vae, psnr
from lib_vaeprec import fused_blocks, groupnorm_kernels
from lib_vaeprec.fused_blocks import FusedBlocks
from standins import ldm_vae

interpreted = pytest.mark.skipif(
    groupnorm_kernels.triton is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton's CPU interpreter not on (TRITON_INTERPRET=1 with triton installed)")


class _Everywhere(groupnorm_kernels.reference):
    """The torch equivalents, let run on the CPU (the kernels run only where Triton does)."""


@pytest.fixture
def everywhere(monkeypatch):
    monkeypatch.setattr(groupnorm_kernels, "available", lambda x: True)
    return _Everywhere


def _decode(vae, z, blocks=None):
    with torch.no_grad():
        if blocks is not None:
            blocks.install(vae)
        try:
            return vae.decode(z).sample
        finally:
            if blocks is not None:
                blocks.remove()


def test_fused_decode_is_as_close_to_fp32_as_the_blocks_own(everywhere):
    vae = make_vae(**SMALL)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = _decode(vae, z)
    vae = vae.to(torch.bfloat16)
    own = _decode(vae, z.bfloat16())
    blocks = FusedBlocks(kernels=everywhere)
    fused = _decode(vae, z.bfloat16(), blocks)
    assert blocks.ran
    assert psnr(fused, exact) >= psnr(own, exact) - 0.5
    assert psnr(fused, own) > 40


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_ldm_blocks_equal_their_own_forward(everywhere, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for block in (ldm_vae.ResnetBlock(32, 64), ldm_vae.ResnetBlock(32, 32), ldm_vae.AttnBlock(32)):
        block = block.eval().to(torch.bfloat16)
        x = torch.randn(1, 32, 12, 10).bfloat16().contiguous(memory_format=fmt)
        with torch.no_grad():
            own = block(x, None) if not isinstance(block, ldm_vae.AttnBlock) else block(x)
            blocks = FusedBlocks(kernels=everywhere)
            blocks._installed.set(block, lambda eager: (blocks._attention_forward(block, eager, False)
                                                        if isinstance(block, ldm_vae.AttnBlock)
                                                        else blocks._resnet_forward(block, eager, False)))
            fused = block(x, None) if not isinstance(block, ldm_vae.AttnBlock) else block(x)
            blocks.remove()
        assert blocks.ran, type(block).__name__
        assert (fused.float() - own.float()).abs().max() < 0.1
        assert fused.is_contiguous(memory_format=fmt)


def test_hooks_other_forwards_and_time_embeddings_run_the_blocks_own_forward(everywhere):
    vae = make_vae(**SMALL).to(torch.bfloat16)
    resnet = vae.decoder.up_blocks[0].resnets[0]
    x = torch.randn(1, resnet.conv1.in_channels, 8, 8).bfloat16()
    blocks = FusedBlocks(kernels=everywhere)
    blocks.install(vae)
    try:
        with torch.no_grad():
            seen = []
            handle = resnet.norm2.register_forward_hook(lambda m, a, out: seen.append(out))
            resnet(x, None)
            handle.remove()
            assert seen and not blocks.ran               # a hook inside: the block's own forward ran
            resnet.norm1.forward = lambda t: t * 0        # another forward on a layer (a tiled call's)
            resnet(x, None)
            del resnet.norm1.forward
            assert not blocks.ran
            with torch.enable_grad():
                resnet.train()
                resnet(x, None)
                resnet.eval()
            assert not blocks.ran                         # training mode
            resnet(x, torch.zeros(1, 512).bfloat16()) if resnet.time_emb_proj is not None else None
            assert not blocks.ran
            resnet(x, None)
            assert blocks.ran
    finally:
        blocks.remove()
    assert "forward" not in resnet.__dict__


def test_the_attentions_folded_projection_follows_new_weights(everywhere):
    vae = make_vae(**SMALL).to(torch.bfloat16)
    attn = vae.decoder.mid_block.attentions[0]
    x = torch.randn(1, 64, 6, 6).bfloat16()
    blocks = FusedBlocks(kernels=everywhere)
    blocks.install(vae)
    try:
        with torch.no_grad():
            first = attn(x)
            attn.to_v.weight.mul_(2)                      # the host loads other weights in place
            again = attn(x)
            blocks.remove()
            own = attn(x)
    finally:
        blocks.remove()
    assert not torch.equal(first, again)
    assert (again.float() - own.float()).abs().max() < 0.1


@interpreted
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape, groups", [((2, 64, 9, 7), 32), ((1, 96, 5, 6), 24), ((1, 32, 3, 3), 8)])
def test_kernels_compute_what_the_reference_does(fmt, shape, groups):
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(groups, shape[1], eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    norm = norm.bfloat16()
    x = (torch.randn(*shape) * 3 + 2).bfloat16().contiguous(memory_format=fmt)
    pre = torch.randn(shape[1]).bfloat16()
    k, r = groupnorm_kernels, groupnorm_kernels.reference
    for silu in (False, True):
        y = k.group_norm(norm, x, silu=silu, pre_bias=pre)
        expected = r.group_norm(norm, x, silu=silu, pre_bias=pre).float()
        assert y.stride() == x.stride()
        assert ((y.float() - expected).abs() <= expected.abs() * 2 ** -7 + 1e-2).all()
    s = torch.randn(*shape).bfloat16().contiguous(memory_format=fmt)
    y = k.residual(x, s, pre, pre, 2.0)
    expected = r.residual(x, s, pre, pre, 2.0).float()
    assert ((y.float() - expected).abs() <= expected.abs() * 2 ** -7 + 1e-2).all()


@interpreted
def test_fused_decode_with_the_kernels():
    vae = make_vae(**SMALL)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = _decode(vae, z)
    vae = vae.to(torch.bfloat16)
    own = _decode(vae, z.bfloat16())
    blocks = FusedBlocks()
    fused = _decode(vae, z.bfloat16(), blocks)
    # within 1.5 dB: the interpreter's rounding to bf16 is NumPy's, not the GPU's (test_cuda.py holds 0.3)
    assert blocks.ran and psnr(fused, exact) >= psnr(own, exact) - 1.5


def test_without_triton_nothing_is_installed_by_the_engine(monkeypatch):
    from lib_vaeprec.engine import VaeEngine
    from lib_vaeprec.options import VaeOptions
    monkeypatch.setattr(groupnorm_kernels, "triton", None)
    vae = make_vae()
    engine = VaeEngine(vae, VaeOptions(dtype="fp32")).attach()
    try:
        with torch.no_grad():
            vae.decode(torch.randn(1, 4, 8, 8))
        assert not engine._fused_blocks.installed and engine.last_call.kernels == ""
    finally:
        engine.detach()
    assert fused_blocks.RESNET_CLASSES


@pytest.mark.parametrize("fp32_scores", [False, True])
def test_the_fused_attention_equals_the_blocks_own(everywhere, monkeypatch, fp32_scores):
    from lib_vaeprec.tiling import attention
    monkeypatch.setattr(attention, "fp32_scores_available", lambda q: fp32_scores)
    monkeypatch.setattr(fused_blocks, "SCORE_BYTES", 6 * 1000)      # several chunks of queries
    vae = make_vae(**SMALL).to(torch.bfloat16)
    attn = vae.decoder.mid_block.attentions[0]
    x = torch.randn(2, 64, 12, 12).bfloat16()        # 144 queries: chunks of 64
    with torch.no_grad():
        own = attn(x)
        blocks = FusedBlocks(kernels=everywhere)
        blocks.install(vae)
        fused = attn(x)
        blocks.remove()
    assert blocks.ran and (fused.float() - own.float()).abs().max() < 0.05


@interpreted
def test_the_softmax_and_bias_kernels():
    torch.manual_seed(0)
    scores = torch.randn(5, 300) * 4
    scores[1, 7] = 80.0
    probs = groupnorm_kernels.softmax(scores, torch.bfloat16)
    assert probs.dtype == torch.bfloat16
    assert (probs.float() - torch.softmax(scores, -1)).abs().max() < 4e-3
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(2, 16, 5, 3).bfloat16().contiguous(memory_format=fmt)
        bias = torch.randn(16).bfloat16()
        expected = x.float() + bias.float().view(1, -1, 1, 1)
        groupnorm_kernels.add_bias(x, bias)
        assert (x.float() - expected).abs().max() <= expected.abs().max() * 2 ** -7


def test_float32_runs_the_blocks_own_forward(everywhere):
    vae = make_vae(**SMALL)
    z = torch.randn(1, 4, 8, 8)
    blocks = FusedBlocks(kernels=everywhere)
    fused = _decode(vae, z, blocks)
    assert not blocks.ran and torch.equal(fused, _decode(vae, z))      # float32: exactly the VAE's own
