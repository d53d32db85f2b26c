"""Stand-in for modules/devices.py (A1111 v1.10, c19d0443): module globals and the NaN check."""
import contextlib

import torch

cpu = torch.device("cpu")
device = torch.device("cpu")
dtype = torch.float32
dtype_vae = torch.float32   # real: set in shared_init.initialize(): fp16 unless --no-half/--no-half-vae
dtype_unet = torch.float32
unet_needs_upcast = False


class NansException(Exception):   # real: class NansException(Exception)
    pass


def test_for_nans(x, where):   # real: test_for_nans(x, where) checks the first element only
    from modules import shared
    if shared.cmd_opts.disable_nan_check:
        return
    if not torch.isnan(x[(0, ) * len(x.shape)]):
        return
    raise NansException(f"A tensor with NaNs was produced in {where}.")


def without_autocast(disable=False):   # real: autocast off when enabled
    return contextlib.nullcontext()


def autocast(disable=False):
    return contextlib.nullcontext()


def torch_gc():
    pass
