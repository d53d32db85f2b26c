# Stand-in for backend/args.py (Forge dfdcbab6): the parsed flags (--vae-in-fp16/fp32/bf16, --vae-in-cpu, ...).
import argparse

args = argparse.Namespace(vae_in_fp16=False, vae_in_fp32=False, vae_in_bf16=False, vae_in_cpu=False,
                          always_gpu=False)
