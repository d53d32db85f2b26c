"""Stand-in for ldm_patched/modules/model_management.py (reForge 3b56b268): VAE device/dtype, on the CPU."""
import torch

from ldm_patched.modules.args_parser import args

OOM_EXCEPTION = torch.cuda.OutOfMemoryError


def get_torch_device():
    return torch.device("cpu")


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False   # real: False on CPU; True on CUDA compute capability >= 8


def vae_dtype(device=None, allowed_dtypes=[]):   # real: vae_dtype(device=None, allowed_dtypes=[])
    if args.vae_in_fp16:
        return torch.float16
    elif args.vae_in_bf16:
        return torch.bfloat16
    elif args.vae_in_fp32:
        return torch.float32
    for d in allowed_dtypes:
        if d == torch.bfloat16 and should_use_bf16(device):
            return d
    return torch.float32


def vae_device():
    return torch.device("cpu") if args.vae_in_cpu else get_torch_device()


def vae_offload_device():
    return get_torch_device() if args.always_gpu else torch.device("cpu")


def intermediate_device():
    return get_torch_device() if args.always_gpu else torch.device("cpu")


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def dtype_size(dtype):
    return torch.empty((), dtype=dtype).element_size()


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    for patcher in models:   # real: a device move (partial loads aside)
        patcher.model.to(patcher.load_device)


def get_free_memory(dev=None, torch_free_too=False):
    return 8 << 30


def soft_empty_cache(force=False):
    pass
