"""Stand-in for modules/devices.py (reForge 3b56b268)."""
import torch

from ldm_patched.modules import model_management

cpu = torch.device("cpu")
device = model_management.get_torch_device()
dtype = torch.float32
dtype_vae = model_management.vae_dtype()   # real: no allowed dtypes, so fp32 unless a --vae-in-* flag


def test_for_nans(x, where):   # real: a no-op
    return
