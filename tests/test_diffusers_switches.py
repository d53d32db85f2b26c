"""diffusers' own switches on an attached VAE: enable_slicing() and enable_tiling() (with the caller's tile
sizes), beside every tiling choice, for decode and encode, each result against a plain untiled fp32 call."""
import pytest
import torch

import lib_vaeprec
from conftest import SMALL, make_vae
from lib_vaeprec import memory


def latents(batch=2, height=8, width=8, seed=0, scale=1.0):
    return torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed)) * scale


# ----- diffusers' enable_slicing() / enable_tiling() beside every tiling choice -----

# A batch of 3 as in a pipeline's batch; 20x20 latents are past diffusers' tile (16 latent pixels for TINY).
SWITCH_LATENTS = latents(batch=3, height=20, width=20, seed=3)
# free memory (host RAM here) in which the untiled call does not fit and a tiled one does: auto tiles
LITTLE_MEMORY = {"decode": 20 * 2**20, "encode": 2 * 2**20}
TILINGS = {"off": dict(tiling="off"), "auto": dict(tiling="auto"), "auto, little memory": dict(tiling="auto"),
           "always": dict(tiling="always", tile_size=64)}


def _references(vae, z):
    with torch.no_grad():
        decoded = vae.decode(z).sample
        image = decoded.clamp(-1, 1)
        return decoded, image, vae.encode(image).latent_dist.parameters


@pytest.fixture(scope="module")
def switch_references():
    return _references(make_vae(), SWITCH_LATENTS)


def _call(vae, kind, z, image):
    with torch.no_grad():
        return vae.decode(z).sample if kind == "decode" else vae.encode(image).latent_dist.parameters


@pytest.mark.parametrize("kind", ["decode", "encode"])
@pytest.mark.parametrize("tiling", list(TILINGS))
@pytest.mark.parametrize("slicing,their_tiling", [(True, False), (False, True), (True, True)])
def test_diffusers_switches_with_every_tiling_choice_give_the_untiled_image(
        kind, tiling, slicing, their_tiling, switch_references, monkeypatch):
    """`pipe.enable_vae_slicing()` crashed our tiled runner (IndexError: a plan for the batch got one image),
    `pipe.enable_vae_tiling()` too (a plan for the image got diffusers' 16-pixel tile); while attached, the
    tiling choice decides how the call is split (ours is exact), and diffusers' switches are the caller's
    again after every call and after remove()."""
    decoded, image, moments = switch_references
    vae = make_vae()
    if slicing:
        vae.enable_slicing()
    if their_tiling:
        vae.enable_tiling()
    if tiling == "auto, little memory":
        monkeypatch.setattr(memory, "host_available_bytes", lambda: LITTLE_MEMORY[kind])
    engine = lib_vaeprec.apply(vae, dtype="fp32", **TILINGS[tiling])
    result = _call(vae, kind, SWITCH_LATENTS, image)
    assert (result - (decoded if kind == "decode" else moments)).abs().max() < 1e-3
    # (an encode of one image at a time fits where the whole batch's tiled maps would not: left untiled)
    assert (engine.last_call.tiles > 0) == (tiling == "always" or (tiling == "auto, little memory" and
                                                                   not (slicing and kind == "encode")))
    assert (vae.use_slicing, vae.use_tiling) == (slicing, their_tiling)
    lib_vaeprec.remove(vae)
    assert (vae.use_slicing, vae.use_tiling) == (slicing, their_tiling)


@pytest.mark.parametrize("kind", ["decode", "encode"])
def test_a_batch_split_into_bands_under_diffusers_switches(kind):
    """The tiled path really cut into bands (SMALL: x8, 192 px images in 64 px tiles), slicing and tiling on."""
    vae = make_vae(**SMALL)
    z = latents(batch=2, height=24, width=24, seed=4)
    decoded, image, moments = _references(vae, z)
    vae.enable_slicing()
    vae.enable_tiling()
    engine = lib_vaeprec.apply(vae, dtype="fp32", tiling="always", tile_size=64)
    result = _call(vae, kind, z, image)
    assert engine.last_call.tiles > 1
    assert (result - (decoded if kind == "decode" else moments)).abs().max() < 1e-3
    lib_vaeprec.remove(vae)


def test_diffusers_tiling_with_the_callers_tile_sizes_and_switches_flipped_while_attached(switch_references):
    decoded, _, _ = switch_references
    vae = make_vae()
    lib_vaeprec.apply(vae, dtype="fp32", tiling="always", tile_size=64)
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = 24, 12, 0.5
    with torch.no_grad():
        first = vae.decode(SWITCH_LATENTS).sample
        vae.enable_slicing()
        vae.disable_tiling()
        second = vae.decode(SWITCH_LATENTS).sample
    assert (first - decoded).abs().max() < 1e-3 and (second - decoded).abs().max() < 1e-3
    lib_vaeprec.remove(vae)
    assert vae.use_slicing and not vae.use_tiling and vae.tile_sample_min_size == 24
