"""A small VAE in the original (ldm) layout, the one A1111, Forge and reForge run.

Stands in for `ldm/modules/diffusionmodules/model.py` (stable-diffusion-stability-ai, as A1111 pins it):
`ResnetBlock.forward(x, temb)`, `AttnBlock.forward(x)`, `Upsample`/`Downsample` (pad (0,1,0,1), stride 2),
`Encoder`/`Decoder` with `conv_in`, `down[i].block/.attn/.downsample`, `mid.block_1/.attn_1/.block_2`,
`up[i].block/.attn/.upsample` (`up[0]` the highest resolution), `norm_out`, `conv_out`; and for
`ldm/models/autoencoder.py: AutoencoderKL.decode(z)` / `.encode(x)` (returns a distribution built from
`parameters`). Forge's `backend/nn/vae.py` and reForge's `ldm_patched/ldm/modules/diffusionmodules/model.py`
use the same names. Only names, call signatures and the order of operations are reproduced.
"""
import torch
from torch import nn
import torch.nn.functional as F


def _norm(channels):
    return nn.GroupNorm(8, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels, with_conv=True):
        super().__init__()
        self.with_conv = with_conv
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Mid(nn.Module):   # a container without forward, as in ldm
    def __init__(self, channels):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(channels, channels), AttnBlock(channels), \
            ResnetBlock(channels, channels)


class _Level(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.block, self.attn = nn.ModuleList(blocks), nn.ModuleList()


CHANNELS = (32, 32, 64)


class Encoder(nn.Module):
    def __init__(self, z=4):
        super().__init__()
        self.conv_in = nn.Conv2d(3, CHANNELS[0], 3, padding=1)
        self.down, cin = nn.ModuleList(), CHANNELS[0]
        for i, cout in enumerate(CHANNELS):
            level = _Level([ResnetBlock(cin, cout), ResnetBlock(cout, cout)])
            if i != len(CHANNELS) - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
            cin = cout
        self.mid = _Mid(cin)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 2 * z, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                h = block(h, None)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, None)), None)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, z=4):
        super().__init__()
        top = CHANNELS[-1]
        self.conv_in = nn.Conv2d(z, top, 3, padding=1)
        self.mid = _Mid(top)
        self.up, cin = nn.ModuleList(), top
        for i in reversed(range(len(CHANNELS))):
            cout = CHANNELS[i]
            level = _Level([ResnetBlock(cin, cout), ResnetBlock(cout, cout), ResnetBlock(cout, cout)])
            if i != 0:
                level.upsample = Upsample(cout)
            self.up.insert(0, level)
            cin = cout
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)
        self.give_pre_end, self.tanh_out = False, False

    def forward(self, z, **kwargs):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z), None)), None)
        for i in reversed(range(len(self.up))):
            for block in self.up[i].block:
                h = block(h, None)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Distribution:
    def __init__(self, parameters, deterministic=False):
        self.parameters, self.deterministic = parameters, deterministic
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)


class AutoencoderKL(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()
        self.quant_conv, self.post_quant_conv = nn.Conv2d(8, 8, 1), nn.Conv2d(4, 4, 1)

    def encode(self, x):
        return Distribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))
