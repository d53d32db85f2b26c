"""Stand-in for modules/shared.py (A1111 v1.10): opts (with the VAE options of shared_options.py), cmd_opts,
state, sd_model."""
import gradio as gr

from modules import devices  # noqa: F401
from modules.options import OptionInfo, Options
from modules.shared_cmd_options import cmd_opts  # noqa: F401
from standin_webui.state import State

# real: modules/shared_options.py, section ('vae', "VAE", "sd")
opts = Options({
    "sd_model_checkpoint": OptionInfo("a.safetensors", "Stable Diffusion checkpoint", gr.Dropdown),
    "sd_vae": OptionInfo("Automatic", "SD VAE", gr.Dropdown, infotext='VAE'),
    "sd_vae_checkpoint_cache": OptionInfo(0, "VAE Checkpoints to cache in RAM", gr.Slider),
    "auto_vae_precision_bfloat16": OptionInfo(False, "Automatically convert VAE to bfloat16"),
    "auto_vae_precision": OptionInfo(True, "Automatically revert VAE to 32-bit floats"),
    "sd_vae_encode_method": OptionInfo("Full", "VAE type for encode", gr.Radio, infotext='VAE Encoder'),
    "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode", gr.Radio, infotext='VAE Decoder'),
})
state = State()
sd_model = None          # real: a property backed by sd_models.model_data
weight_load_location = None
