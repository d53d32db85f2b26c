# Stand-in for modules/shared_cmd_options.py (A1111 v1.10): cmd_opts parsed by modules/cmd_args.py.
import argparse

cmd_opts = argparse.Namespace(no_half=False, no_half_vae=False, precision="autocast", upcast_sampling=False,
                              disable_nan_check=False, lowvram=False, medvram=False)
