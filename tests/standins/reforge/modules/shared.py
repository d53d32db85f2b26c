"""Stand-in for modules/shared.py (reForge 3b56b268)."""
import gradio as gr

from modules.options import OptionInfo, Options
from modules.shared_cmd_options import cmd_opts  # noqa: F401
from standin_webui.state import State

opts = Options({
    "sd_model_checkpoint": OptionInfo("a.safetensors", "Stable Diffusion checkpoint", gr.Dropdown),
    "sd_checkpoints_limit": OptionInfo(2, "Maximum number of checkpoints loaded at the same time", gr.Slider),
    "sd_vae": OptionInfo("Automatic", "SD VAE", gr.Dropdown, infotext='VAE'),
    "auto_vae_precision_bfloat16": OptionInfo(False, "Automatically convert VAE to bfloat16"),  # read by nothing
    "auto_vae_precision": OptionInfo(True, "Automatically revert VAE to 32-bit floats"),         # read by nothing
    "sd_vae_encode_method": OptionInfo("Full", "VAE type for encode", gr.Radio, infotext='VAE Encoder'),
    "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode", gr.Radio, infotext='VAE Decoder'),
    "reflective_padding_vae_sd": OptionInfo("Disabled", "reflective vae padding", gr.Radio),
})
state = State()
sd_model = None
weight_load_location = None
