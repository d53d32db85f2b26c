# Stand-in for modules/shared_cmd_options.py (Forge dfdcbab6): A1111's flags are still parsed (--no-half-vae
# is accepted and read by nothing).
import argparse

cmd_opts = argparse.Namespace(no_half=False, no_half_vae=False, disable_nan_check=False)
