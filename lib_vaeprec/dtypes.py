"""Names of the floating-point formats the extension speaks about, and their torch dtypes."""
import torch

BY_NAME = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAME_OF = {dtype: name for name, dtype in BY_NAME.items()}

# Each format's next safer one for redoing a non-finite result: fp16 overflows at 65504,
# bf16 has fp32's range, fp32 is the end of the line.
SAFER = {torch.float16: torch.bfloat16, torch.bfloat16: torch.float32}


def name_of(dtype):
    return NAME_OF.get(dtype, str(dtype).replace("torch.", ""))


def is_float(tensor):
    return isinstance(tensor, torch.Tensor) and tensor.is_floating_point()


def of_module(module, default):
    """The dtype of a module's first floating-point parameter (`default` if it has none)."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return default
