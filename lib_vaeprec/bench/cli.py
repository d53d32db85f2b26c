"""`python -m lib_vaeprec bench`: compares dtypes, tiling and offload on a VAE.

With no arguments it runs the SD/SDXL VAE architecture with seeded random weights on the best local
device, at sizes that finish in about a minute on a 2-core CPU.
"""
import argparse
import platform
import sys

import torch

from ..device_caps import best_device, caps_of
from ..options import OFFLOAD_CHOICES, VaeOptions
from . import models, report, runner

DTYPES = ("fp32", "bf16", "fp16", "mixed")


class UsageError(Exception):
    pass


def _csv(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _sizes(text):
    try:
        sizes = [int(t) for t in _csv(text)]
    except ValueError:
        raise UsageError(f"--sizes takes pixel sizes like 512,1024, not {text!r}")
    bad = [s for s in sizes if s <= 0 or s % 8]
    if bad or not sizes:
        raise UsageError(f"--sizes must be positive multiples of 8 (got {text!r})")
    return sizes


def default_dtypes(device):
    """fp32 plus the formats the device runs natively (the others take minutes on a CPU)."""
    caps = caps_of(device)
    chosen = ["fp32"]
    if caps.native_bf16:
        chosen += ["bf16", "mixed"]
    if caps.native_fp16:
        chosen.append("fp16")
    return chosen


# --speed names -> the options each sets (fused_upsample and fast_groupnorm are on by default, so their
# variants turn them off)
SPEED_FLAGS = {"compile": {"compile": True}, "channels_last": {"channels_last": True},
               "low_memory": {"low_memory": True}, "unfused": {"fused_upsample": False},
               "native_groupnorm": {"fast_groupnorm": False},
               "free_memory": {"free_memory": True}}


def parser():
    p = argparse.ArgumentParser(prog="python -m lib_vaeprec bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", help="a VAE .safetensors (diffusers or original layout); default: random SD weights")
    p.add_argument("--arch", default="sd", choices=sorted(models.ARCHES), help="architecture of the embedded default")
    p.add_argument("--device", help="cuda, cuda:1, cpu, mps (default: best available)")
    p.add_argument("--sizes", help="image sizes in pixels, comma-separated (default: 64,128 on CPU; 512,1024,2048 on GPU)")
    p.add_argument("--dtypes", help=f"comma-separated from {','.join(DTYPES)} or 'all' "
                                    "(default: fp32 and what the device runs natively)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tiling", choices=("off", "on", "auto"), default="off",
                   help="also run tiled variants (on), or variants with tiling 'auto' as the web UI runs it")
    p.add_argument("--tile-size", type=int, default=0, help="tile size in pixels for tiled variants (0: from free memory)")
    p.add_argument("--free-gb", type=float, default=0,
                   help="run the --tiling variants with only this much GPU memory free (as on a smaller card)")
    p.add_argument("--offload", default="", help="also run these offload modes: " + ",".join(OFFLOAD_CHOICES))
    p.add_argument("--speed", default="", help="also run these speed options on the main dtype: "
                   + ", ".join(SPEED_FLAGS) + " (join with +, e.g. compile+channels_last)")
    p.add_argument("--profile", action="store_true", help="print time and peak memory per stage and GPU time "
                   "per op kind for the last 16-bit variant, a --speed one when given (CUDA)")
    p.add_argument("--no-encode", action="store_true", help="decode only")
    p.add_argument("--no-baseline", action="store_true", help="skip the plain diffusers bf16/fp16 rows")
    p.add_argument("--skip-fp32-timing", action="store_true",
                   help="do not time plain fp32 (no ratios; the fp32 reference image is still made once)")
    p.add_argument("--tf32", choices=("off", "on"), default="off",
                   help="let fp32 convolutions/matmuls use TF32 (torch's default for cuDNN; off = strict fp32)")
    p.add_argument("--cudnn-benchmark", choices=("on", "off"), default="on",
                   help="let cuDNN time its convolution algorithms per shape (the first call of a shape is slower)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png")
    return p


def variants_from(args, device):
    if args.dtypes in (None, ""):
        dtypes = default_dtypes(device)
    elif args.dtypes == "all":
        dtypes = list(DTYPES)
    else:
        dtypes = _csv(args.dtypes)
        unknown = [d for d in dtypes if d not in DTYPES]
        if unknown:
            raise UsageError(f"unknown dtype {unknown[0]!r}: choose from {', '.join(DTYPES)}")
    offloads = _csv(args.offload)
    for mode in offloads:
        if mode not in OFFLOAD_CHOICES:
            raise UsageError(f"unknown offload mode {mode!r}: choose from {', '.join(OFFLOAD_CHOICES)}")
    if args.tile_size < 0 or (args.tile_size and (args.tile_size < 64 or args.tile_size % 8)):
        raise UsageError("--tile-size must be 0 (auto) or a multiple of 8 from 64 up")
    untiled = dict(tiling="off", nan_fallback=False)
    variants = [] if args.skip_fp32_timing else [runner.Variant("diffusers fp32", "fp32", plain=True)]
    if not args.no_baseline:
        variants += [runner.Variant(f"diffusers {d}", d, plain=True) for d in dtypes if d in ("bf16", "fp16")]
    variants += [runner.Variant(f"vaeprec {d}", d, options=VaeOptions(dtype=d, **untiled)) for d in dtypes]
    if args.tiling in ("on", "auto"):
        mode, label = ("always", "tiled") if args.tiling == "on" else ("auto", "tiling auto")
        variants += [runner.Variant(f"vaeprec {d} {label}", d, options=VaeOptions(
            dtype=d, tiling=mode, tile_size=args.tile_size, nan_fallback=False), limited_memory=True)
            for d in dtypes]
    main_dtype = next((d for d in dtypes if d != "fp32"), "fp32")
    variants += [runner.Variant(f"vaeprec {main_dtype} {m}", main_dtype, options=VaeOptions(
        dtype=main_dtype, offload=m, **untiled)) for m in offloads]
    for combo in _csv(args.speed):
        flags = combo.split("+")
        if any(f not in SPEED_FLAGS for f in flags):
            raise UsageError(f"unknown speed option {combo!r}: choose from {', '.join(SPEED_FLAGS)} (join with +)")
        chosen = {name: value for f in flags for name, value in SPEED_FLAGS[f].items()}
        variants.append(runner.Variant(f"vaeprec {main_dtype} {combo}", main_dtype, options=VaeOptions(
            dtype=main_dtype, **untiled, **chosen)))
    return variants




def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "bench":
        print("usage: python -m lib_vaeprec bench [options]   (--help for the options)", file=sys.stderr)
        return 2
    try:
        args = parser().parse_args(argv[1:])
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 2
    try:
        device = torch.device(args.device) if args.device else best_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but torch sees no CUDA device")
        sizes = _sizes(args.sizes) if args.sizes else ([512, 1024, 2048] if device.type == "cuda" else [64, 128])
        if args.batch < 1 or args.runs < 1 or args.warmup < 0:
            raise UsageError("--batch and --runs must be at least 1, --warmup at least 0")
        variants = variants_from(args, device)
        vae = models.load_file(args.vae) if args.vae else models.build(args.arch, args.seed)
    except (UsageError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run(args, device, sizes, variants, vae)


def run(args, device, sizes, variants, vae):
    from diffusers.utils import logging as diffusers_logging
    from tqdm import tqdm
    diffusers_logging.set_verbosity_error()   # plain baselines cast with .to(dtype) on purpose
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    ops = 1 if args.no_encode else 2
    caps = caps_of(device)
    meta = dict(device=caps.name or device.type, torch=torch.__version__, python=platform.python_version(),
                vae=args.vae or f"{args.arch} architecture, random weights (seed {args.seed})",
                tf32=args.tf32, cudnn_benchmark=args.cudnn_benchmark, free_gb=args.free_gb, sizes=sizes, batch=args.batch, runs=args.runs, warmup=args.warmup, command=" ".join(sys.argv))
    print(f"VAE: {meta['vae']} | device: {meta['device']} | torch {meta['torch']} | "
          f"variants: {', '.join(v.name for v in variants)}", flush=True)
    with tqdm(total=len(sizes) * len(variants) * ops, desc="bench", unit="run") as bar:
        rows = runner.run(vae, device, sizes, variants, batch=args.batch, warmup=args.warmup, runs=args.runs,
                          encode=not args.no_encode, seed=args.seed, progress=bar, free_gb=args.free_gb)
    print(report.table(rows))
    if args.profile and device.type == "cuda":
        meta["profile"] = _profile(vae, device, sizes, variants, args)
    json_path, png_path = report.write_all(rows, meta, args.out)
    print(f"wrote {json_path} and {png_path}")
    return 0


def _profile(vae, device, sizes, variants, args):
    from ..engine import VaeEngine
    from . import profile
    # the last of ours in a 16-bit dtype: a --speed variant when there is one
    main = next((v for v in reversed(variants) if not v.plain and v.options.dtype != "fp32"), variants[-1])
    engine = VaeEngine(vae, main.options).attach()
    found = {}
    try:
        for size in sizes:
            z = torch.randn(args.batch, vae.config.latent_channels, size // 8, size // 8, device=device)
            with torch.no_grad():
                vae.decode(z)
                run = lambda: vae.decode(z)  # noqa: E731
                stages = profile.stage_breakdown(vae.decoder, run, device)
                ops = profile.op_breakdown(run, device)
            found[size] = {"stages": stages, "ops": ops}
            print(f"profile {main.name} decode {size}px: GPU time by op kind {ops}")
            for name, ms, mib in stages:
                print(f"  {name:18s} {ms:8.2f} ms  peak +{mib:8.1f} MiB")
    finally:
        engine.detach()
    return found
