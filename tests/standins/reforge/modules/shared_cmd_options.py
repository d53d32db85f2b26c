# Stand-in for modules/shared_cmd_options.py (reForge 3b56b268): modules/cmd_args.py adds A1111's flags to
# ldm_patched's parser; --no-half-vae is accepted and read by nothing.
import argparse

cmd_opts = argparse.Namespace(no_half=False, no_half_vae=False, vae_in_fp16=False, vae_in_fp32=False,
                              vae_in_bf16=False, vae_in_cpu=False, disable_nan_check=False)
