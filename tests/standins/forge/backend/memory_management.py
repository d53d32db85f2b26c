"""Stand-in for backend/memory_management.py (Forge dfdcbab6): VAE device/dtype choice and model loading,
on the CPU."""
import torch

from backend.args import args

cpu = torch.device("cpu")
OOM_EXCEPTION = torch.cuda.OutOfMemoryError
VAE_DTYPES = [torch.float32]      # real: bf16 first on NVIDIA compute capability >= 8 and on Intel XPU
VAE_ALWAYS_TILED = False


def get_torch_device():
    return cpu


def vae_dtype(device=None, allowed_dtypes=[]):   # real: vae_dtype(device=None, allowed_dtypes=[])
    if args.vae_in_fp16:
        return torch.float16
    elif args.vae_in_bf16:
        return torch.bfloat16
    elif args.vae_in_fp32:
        return torch.float32
    for d in allowed_dtypes:
        if d in VAE_DTYPES:
            return d
    return VAE_DTYPES[0]


def vae_device():
    return cpu if args.vae_in_cpu else get_torch_device()


def vae_offload_device():
    return get_torch_device() if args.always_gpu else cpu


def intermediate_device():
    return get_torch_device() if args.always_gpu else cpu


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def dtype_size(dtype):
    return torch.empty((), dtype=dtype).element_size()


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    # real: LoadedModel.model_load -> ModelPatcher.forge_patch_model(device) -> model.to(device): a device move
    for patcher in models:
        patcher.model.to(patcher.load_device)


def load_model_gpu(model):
    return load_models_gpu([model])


def get_free_memory(dev=None, torch_free_too=False):
    return 8 << 30


def unload_all_models():
    pass


def soft_empty_cache(force=False):
    pass
