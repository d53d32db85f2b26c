"""Shared pieces of modules/processing.py (A1111 v1.10; Forge and reForge keep them): the processing object,
DecodedSamples, Processed, create_infotext. Each host's stand-in processing.py holds its own process_images."""
import torch


class StableDiffusionProcessing:
    """real: @dataclass StableDiffusionProcessing (a few of its fields). `sample_hook(p, n)` lets a test act
    during sampling (interrupt, switch model)."""

    def __init__(self, n_iter=1, batch_size=1, override_settings=None, override_settings_restore_afterwards=True,
                 init_images=None, script_args=(), scripts=None, seed=0):
        self.n_iter, self.batch_size, self.seed = n_iter, batch_size, seed
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = override_settings_restore_afterwards
        self.extra_generation_params = {}
        self.init_images = init_images        # img2img: a [B, 3, H, W] tensor in [0, 1] here
        self.init_latent = None
        self.scripts, self.script_args = scripts, tuple(script_args)
        self.sample_hook = None
        self.is_api = False     # real: field(default=False, init=False); modules/api/api.py sets it True

    def sample(self, n):
        """The sampler's output for batch n: random latents (txt2img) or the encoded init image (img2img)."""
        if self.sample_hook is not None:
            self.sample_hook(self, n)
        if self.init_latent is not None:
            return self.init_latent.float()
        generator = torch.Generator().manual_seed(self.seed + n)
        return torch.randn(self.batch_size, 4, 8, 8, generator=generator)


class DecodedSamples(list):   # real: class DecodedSamples(list): already_decoded = True
    already_decoded = True


class Processed:   # real: class Processed (images and per-image infotexts)
    def __init__(self, p, images, infotexts):
        self.images, self.infotexts = images, infotexts
        self.info = infotexts[0] if infotexts else ""


def create_infotext(p):
    """real: create_infotext(p, ...) joins fixed fields with **p.extra_generation_params as 'k: v' pairs."""
    params = {"Steps": 20, **p.extra_generation_params}
    return ", ".join(f"{k}: {v}" for k, v in params.items() if v is not None)


def parse_generation_parameters(text):
    """real: infotext_utils.parse_generation_parameters (the last line's 'k: v' pairs; our values hold no commas)."""
    return dict(part.split(": ", 1) for part in text.split(", "))


def finish_batch(p, decoded, n, images, infotexts):
    """What process_images_inner does after decoding a batch: stack, clamp to [0, 1], postprocess_batch,
    then one infotext per image (created after postprocess_batch, before saving)."""
    x = torch.stack(list(decoded)).float()
    x = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)
    if p.scripts is not None:
        p.scripts.postprocess_batch(p, x, batch_number=n)
    for image in x:
        images.append(image)
        infotexts.append(create_infotext(p))


def apply_override_settings(p, opts):
    """real (process_images): opts.set(k, v, is_api=True, run_callbacks=False) for each override; returns the
    stored values to restore afterwards."""
    stored = {k: opts.data[k] for k in p.override_settings if k in opts.data}
    for k, v in p.override_settings.items():
        opts.set(k, v, is_api=True, run_callbacks=False)
    return stored


def restore_override_settings(p, opts, stored):
    if p.override_settings_restore_afterwards:
        for k, v in stored.items():
            setattr(opts, k, v)
