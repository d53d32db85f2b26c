"""Stand-in for modules/sd_samplers_common.py (Forge dfdcbab6): the "Full" paths."""
import torch

from modules import devices, shared

approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


def samples_to_images_tensor(sample, approximation=None, model=None):
    if model is None:
        model = shared.sd_model
    return model.decode_first_stage(sample)


def decode_first_stage(model, x):
    return samples_to_images_tensor(x, approximation_indexes.get(shared.opts.sd_vae_decode_method, 0), model)


def images_tensor_to_samples(image, approximation=None, model=None):
    # real: casts the image to devices.dtype_vae (fixed at import) and encodes one image at a time
    image = image.to(devices.device, dtype=devices.dtype_vae)
    image = image * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))
