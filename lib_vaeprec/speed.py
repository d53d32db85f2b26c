"""Speed options for the VAE's coders: torch.compile and the channels_last memory format.

Compiled functions are cached per coder class, not per module: a host that reloads or rebuilds its
VAE (Forge builds a new one per checkpoint) reuses what was compiled. Any failure while compiling or
running compiled code falls back to eager for good, with one warning.
"""
import functools
import logging

import torch

from . import forward_override

log = logging.getLogger("vae_precision")
_compiled = {}          # coder class -> compiled forward (or None after a failure)


def _compiled_forward(cls):
    if cls not in _compiled:
        _compiled[cls] = torch.compile(cls.forward, dynamic=False)
    return _compiled[cls]


class CompiledCoders:
    """Installs compiled forwards on a VAE's encoder and decoder; `remove` puts the eager ones back."""

    def __init__(self):
        self._installed = forward_override.Installed()

    def install(self, module):
        for part in ("decoder", "encoder"):
            coder = getattr(module, part, None)
            if coder is None or _compiled.get(type(coder), True) is None:
                continue
            self._installed.set(coder, lambda eager, coder=coder: functools.partial(self._run, coder, eager))

    @staticmethod
    def _run(coder, eager, *args, **kwargs):
        cls = type(coder)
        compiled = _compiled_forward(cls) if _compiled.get(cls, True) is not None else None
        if compiled is None:
            return eager(*args, **kwargs)
        try:
            return compiled(coder, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: eager is always correct
            _compiled[cls] = None
            log.warning("VAE Precision: compiling the %s failed (%s); running it eagerly",
                        cls.__name__, str(error).splitlines()[0][:200])
            return eager(*args, **kwargs)

    def remove(self):
        self._installed.restore_all()


def is_channels_last(x):
    """Whether a 4-D map is stored channels_last (and not also plainly contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def to_memory_format(module, channels_last):
    """Puts 4-D weights in channels_last (or back to contiguous); values and dtype are untouched."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 4 and not param.is_contiguous(memory_format=fmt):
                param.data = param.data.contiguous(memory_format=fmt)
