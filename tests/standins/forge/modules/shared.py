"""Stand-in for modules/shared.py (Forge dfdcbab6)."""
import gradio as gr

from modules.options import OptionInfo, Options
from modules.shared_cmd_options import cmd_opts  # noqa: F401
from standin_webui.state import State

opts = Options({
    "sd_model_checkpoint": OptionInfo("a.safetensors", "Stable Diffusion checkpoint", gr.Dropdown),
    "forge_additional_modules": OptionInfo([], "VAE / Text Encoder"),
    "auto_vae_precision_bfloat16": OptionInfo(False, "Automatically convert VAE to bfloat16"),  # read by nothing
    "auto_vae_precision": OptionInfo(True, "Automatically revert VAE to 32-bit floats"),         # read by nothing
    "sd_vae_encode_method": OptionInfo("Full", "VAE type for encode", gr.Radio, infotext='VAE Encoder'),
    "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode", gr.Radio, infotext='VAE Decoder'),
})
state = State()
sd_model = None
