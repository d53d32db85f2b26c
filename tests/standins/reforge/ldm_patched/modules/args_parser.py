# Stand-in for ldm_patched/modules/args_parser.py (reForge 3b56b268): the parsed flags.
import argparse

args = argparse.Namespace(vae_in_fp16=False, vae_in_fp32=False, vae_in_bf16=False, vae_in_cpu=False,
                          always_gpu=False)
