"""Stand-in for modules/sd_samplers_common.py (A1111 v1.10): the "Full" decode/encode paths."""
import torch

from modules import devices, shared

approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


def samples_to_images_tensor(sample, approximation=None, model=None):
    # real: Full decode casts to the VAE's `dtype` and decodes without autocast
    if model is None:
        model = shared.sd_model
    with torch.no_grad(), devices.without_autocast():
        return model.decode_first_stage(sample.to(model.first_stage_model.dtype))


def decode_first_stage(model, x):
    # real: decode_first_stage(model, x): x.to(devices.dtype_vae), then samples_to_images_tensor
    x = x.to(devices.dtype_vae)
    approx_index = approximation_indexes.get(shared.opts.sd_vae_decode_method, 0)
    return samples_to_images_tensor(x, approx_index, model)


def images_tensor_to_samples(image, approximation=None, model=None):
    # real: images_tensor_to_samples: recasts the whole VAE to devices.dtype_vae on every Full encode
    if model is None:
        model = shared.sd_model
    model.first_stage_model.to(devices.dtype_vae)
    image = image.to(shared.device if hasattr(shared, "device") else devices.device, dtype=devices.dtype_vae)
    image = image * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))
