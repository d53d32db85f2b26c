# Stand-in for modules/shared_cmd_options.py (A1111 v1.10): cmd_opts parsed by modules/cmd_args.py, as on a
# CPU, where the web UI runs with --no-half (devices.dtype_vae is then fp32: modules/shared_init.py).
import argparse

cmd_opts = argparse.Namespace(no_half=True, no_half_vae=False, precision="autocast", upcast_sampling=False,
                              disable_nan_check=False, lowvram=False, medvram=False)
