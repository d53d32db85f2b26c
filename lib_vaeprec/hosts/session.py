"""One render's VAE bookkeeping: the options it runs with, and the VAE calls of the batch being made.

Stats are written into `p.extra_generation_params` in `postprocess_batch`: after the batch is decoded and
before its images are saved, so each image's infotext describes its own batch (an img2img or hires encode
made before a batch counts for that batch).
"""
from ..infotext import (KEY_DECODE, KEY_DTYPE, KEY_ENCODE, KEY_FALLBACK, KEY_KERNELS, KEY_NONFINITE, KEY_OFFLOAD,
                        KEY_PEAK, KEY_RAM, KEY_TILE_SIZE, KEY_TILING, RESTORES, format_params)
from ..stats import GenerationStats

ALL_KEYS = (KEY_DTYPE, KEY_DECODE, KEY_ENCODE, KEY_PEAK, KEY_RAM, KEY_TILING, KEY_TILE_SIZE, KEY_OFFLOAD,
            KEY_KERNELS, KEY_FALLBACK, KEY_NONFINITE)
ATTR = "vae_precision_session"   # where the session rides on the processing object `p`


class RenderSession:
    def __init__(self, baseline=None):
        self.baseline = baseline      # settings-level options to go back to after the render
        self.options = None           # what this render runs with (settings + overrides + accordion)
        self.stats = GenerationStats()

    def record(self, call):
        self.stats.add(call)

    def write_infotext(self, p):
        """Puts this batch's pairs into p.extra_generation_params (replacing the previous batch's) and
        starts counting the next batch."""
        params = p.extra_generation_params
        for name in ALL_KEYS:
            params.pop(name, None)
        options, stats = self.options, self.stats
        self.stats = GenerationStats()
        if options is None or not options.enabled:
            return {}
        pairs = format_params(options, stats, images=getattr(p, "batch_size", None))
        if not options.write_stats:
            pairs = {name: value for name, value in pairs.items() if name in RESTORES}
        params.update(pairs)
        return pairs


def of(p, create=True):
    session = getattr(p, ATTR, None)
    if session is None and create:
        session = RenderSession()
        setattr(p, ATTR, session)
    return session
