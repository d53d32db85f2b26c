"""Finding the tensor inside whatever a VAE's decode/encode returns, and rebuilding that result.

Results seen in the wild: a plain tensor (ldm/sgm/Forge decode), diffusers' DecoderOutput(sample)
and AutoencoderKLOutput(latent_dist), tuples of those (return_dict=False), and a
DiagonalGaussianDistribution built from a `parameters` tensor (ldm, sgm, diffusers encode).
"""
import dataclasses

import torch


def _is_distribution(value):
    return hasattr(value, "parameters") and isinstance(getattr(value, "parameters"), torch.Tensor) \
        and not isinstance(value, torch.nn.Module)


def main_tensor(value):
    """The batch-first tensor that carries the result (sample or distribution parameters)."""
    if isinstance(value, torch.Tensor):
        return value
    if _is_distribution(value):
        return value.parameters
    if isinstance(value, (tuple, list)) and value:
        return main_tensor(value[0])
    for field in ("sample", "latent_dist", "latents"):
        if hasattr(value, field):
            return main_tensor(getattr(value, field))
    raise TypeError(f"cannot find the result tensor in a {type(value).__name__}")


def _new_distribution(template, parameters):
    kwargs = {}
    if hasattr(template, "deterministic"):
        kwargs["deterministic"] = template.deterministic
    try:
        return type(template)(parameters, **kwargs)
    except TypeError:
        return type(template)(parameters)


def with_tensor(template, tensor):
    """A result shaped like `template` whose main tensor is `tensor`."""
    if isinstance(template, torch.Tensor):
        return tensor
    if _is_distribution(template):
        return _new_distribution(template, tensor)
    if isinstance(template, (tuple, list)):
        return type(template)([with_tensor(template[0], tensor), *template[1:]])
    for field in ("sample", "latent_dist", "latents"):
        if hasattr(template, field):
            if dataclasses.is_dataclass(template):
                return dataclasses.replace(template, **{field: with_tensor(getattr(template, field), tensor)})
            return type(template)(**{field: with_tensor(getattr(template, field), tensor)})
    raise TypeError(f"cannot rebuild a {type(template).__name__}")


def to_float32(value):
    """The result as the host expects it: float32, in the standard (contiguous) layout, whatever layout
    the VAE's last layers produced (fast GroupNorm keeps maps channels_last)."""
    tensor = main_tensor(value)
    if tensor.dtype == torch.float32 and tensor.is_contiguous():
        return value
    return with_tensor(value, tensor.to(torch.float32, memory_format=torch.contiguous_format))


def replace_samples(value, index, replacement):
    """`value` with the batch entries at `index` (a 1-D long tensor) taken from `replacement`."""
    tensor = main_tensor(value).clone()
    tensor[index] = main_tensor(replacement).to(tensor.dtype)
    return with_tensor(value, tensor)
