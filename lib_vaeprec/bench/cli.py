"""`python -m lib_vaeprec bench`: compares dtypes, tiling and offload on a VAE.

With no arguments it runs the SD/SDXL VAE architecture with seeded random weights on the best local
device: plain diffusers in fp32 (on CUDA both with TF32, as the web UIs run it, and strict), plain
diffusers and VAE Precision in the device's best 16-bit format, VAE Precision's `auto` where it runs
something else there (mixed on a GPU with fp16 and bf16), and one tiled row of each at the largest size,
in about a minute on a 2-core CPU. The kernels column says where the Triton kernels ran (fused_blocks).
"""
import argparse
import math
import platform
import sys
import time

import torch

from .. import dtypes as dtype_names
from .. import options as vae_options
from .. import policy
from ..device_caps import best_device, caps_of
# on: autotuning for the body, off: torch's default (off), as the web UIs leave it
from ..engine import _cudnn_benchmark as cudnn_autotuning
from ..options import OFFLOAD_CHOICES, VaeOptions
from . import footprint, models, report, runner

DTYPES = ("fp32", "bf16", "fp16", "mixed")
# When --sizes is not given: the SD/SDXL sizes on a GPU (the whole run within a minute on an H100); on
# a CPU, where a 1024² fp32 decode alone takes tens of seconds, one small size (under a minute on 2 cores,
# its tiled rows included).
DEFAULT_SIZES = {"accelerator": (1024, 2048), "cpu": (128,)}
DEFAULT_FREE_GB = 2.0     # GPU memory the no-flag run's tiled rows have, as on a small card
TF32_ROWS = {"both": (True, False), "on": (True,), "off": (False,)}
FP32_NAMES = {None: "diffusers fp32", True: "diffusers fp32 (TF32)", False: "diffusers fp32 (strict)"}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (main prints it), not usage text and a SystemExit."""

    def error(self, message):
        raise UsageError(message)


def _csv(text, flag):
    """The comma-separated items of a flag's value; an empty list is an error, not the default."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"{flag} is empty (got {text!r}); leave the flag out for its default")
    return items


def _sizes(text):
    items = _csv(text, "--sizes")
    try:
        sizes = [int(t) for t in items]
    except ValueError:
        raise UsageError(f"--sizes takes pixel sizes like 512,1024, not {text!r}")
    if any(s <= 0 or s % 8 for s in sizes):
        raise UsageError(f"--sizes must be positive multiples of 8 (got {text!r})")
    return list(dict.fromkeys(sizes))


def main_dtype(caps):
    """The 16-bit format the device runs natively, else fp32 (bf16/fp16 are ~200x slower without it)."""
    if caps.native_bf16:
        return "bf16"
    return "fp16" if caps.native_fp16 else "fp32"


def auto_dtype(caps):
    """What dtype 'auto' runs on this device: mixed, or the one format it picks."""
    precision = policy.resolve("auto", caps)
    return "mixed" if precision.mixed else dtype_names.name_of(precision.dtype)


def default_sizes(caps):
    return list(DEFAULT_SIZES["cpu" if caps.kind == "cpu" else "accelerator"])


def default_tile_px(largest_size):
    """Tile size of the default tiled row: a quarter of the image side (512 at 2048²), at least 64."""
    return min(vae_options.MAX_TILE_PX, max(64, largest_size // 4 // 8 * 8))


def fp32_rows(caps, tf32="both", strict_sizes=()):
    """The plain fp32 baselines: on CUDA with TF32 (as the web UIs run it) and strict, as --tf32 asks;
    one elsewhere (TF32 is CUDA's). `strict_sizes`: where the strict row beside the TF32 one is timed
    (empty: every size)."""
    if caps.kind != "cuda":
        return [runner.Variant(FP32_NAMES[None], "fp32", plain=True)]
    return [runner.Variant(FP32_NAMES[on], "fp32", plain=True, tf32=on,
                           sizes=strict_sizes if on is False and tf32 == "both" else ())
            for on in TF32_ROWS[tf32]]


# --speed names -> the options each sets (fused_upsample and fast_groupnorm are on by default, so their
# variants turn them off)
SPEED_FLAGS = {"compile": {"compile": True}, "channels_last": {"channels_last": True},
               "low_memory": {"low_memory": True}, "unfused": {"fused_upsample": False},
               "native_groupnorm": {"fast_groupnorm": False},
               "free_memory": {"free_memory": True}}


def parser():
    p = _Parser(prog="python -m lib_vaeprec bench", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", help="a VAE .safetensors (diffusers or original layout); default: random SD weights")
    p.add_argument("--arch", choices=sorted(models.ARCHES),
                   help="architecture of the embedded default (default sd); with --vae the file's wins")
    p.add_argument("--device", help="cuda, cuda:1, cpu, mps (default: best available)")
    p.add_argument("--sizes", help="image sizes in pixels, comma-separated (default: "
                   f"{','.join(map(str, DEFAULT_SIZES['cpu']))} on CPU; "
                   f"{','.join(map(str, DEFAULT_SIZES['accelerator']))} on GPU)")
    p.add_argument("--dtypes", help=f"VAE Precision's rows: comma-separated from {','.join(DTYPES)} or 'all' "
                                    "(default: the device's native 16-bit format, else fp32)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tiling", choices=("off", "on", "auto"),
                   help="tiled rows: on (every dtype and size), auto (tiling 'auto' as the web UI runs it), "
                        "off; each with a 'diffusers tiled' row (its enable_tiling()). Default: one tiled row "
                        "of the main dtype at the largest size, and its diffusers tiled row")
    p.add_argument("--tile-size", help="tile size in pixels for tiled rows, 64 to "
                   f"{vae_options.MAX_TILE_PX} or 0 (from free memory); default 0 with --tiling, a quarter of "
                   "the largest size for the default tiled row. The diffusers tiled row uses it too (0: diffusers' own)")
    p.add_argument("--free-gb", type=float, default=None,
                   help="run the tiled rows with only this much GPU memory free (as on a smaller card; CUDA). "
                        f"Default: {DEFAULT_FREE_GB:g} for the no-flag run's tiled rows, so that both tilers work in "
                        "the same small memory; else all memory")
    p.add_argument("--cap-gb", type=float, default=None,
                   help="run the tiled rows with torch's allocator capped at this many GB above what the bench "
                        "holds (torch.cuda.set_per_process_memory_fraction; CUDA): a limit that free-memory "
                        "readings do not show. With --free-gb both apply")
    p.add_argument("--tiled-only", action="store_true",
                   help="run only the tiled rows (ours and, unless --no-baseline, diffusers tiled)")
    p.add_argument("--first-call", action="store_true",
                   help="decode only: run the rows before anything else runs on the device, so the first row's "
                        "1st ms is the process's first call (a fresh web UI); the fp32 reference is made after "
                        "them")
    p.add_argument("--no-reference", action="store_true",
                   help="decode only: make no fp32 reference (no psnr figures), where it would cost more than the "
                        "rows (an 8192² fp32 reference is made tiled, in about a minute)")
    p.add_argument("--offload", help="also run these offload modes: " + ",".join(OFFLOAD_CHOICES))
    p.add_argument("--speed", help="also run these speed options on the main dtype: "
                   + ", ".join(SPEED_FLAGS) + " (join with +, e.g. compile+channels_last)")
    p.add_argument("--profile", action="store_true", help="print time and peak memory per stage and GPU time "
                   "per op kind for the last 16-bit variant, a --speed one when given (CUDA)")
    p.add_argument("--no-encode", action="store_true", help="decode only")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the plain diffusers bf16/fp16 rows, the diffusers tiled row included")
    p.add_argument("--skip-fp32-timing", action="store_true",
                   help="do not time plain fp32 (no ratios; the fp32 reference image is still made once)")
    p.add_argument("--tf32", choices=tuple(TF32_ROWS), default="both",
                   help="CUDA: TF32 for fp32 convolutions and matmuls. both (default): every row with TF32, as "
                        "the web UIs run, plus a strict fp32 row; on: TF32 only; off: strict fp32 everywhere. "
                        "The x columns compare with plain fp32 with TF32 when it runs; PSNR with strict fp32")
    p.add_argument("--cudnn-benchmark", choices=("on", "off"), default="off",
                   help="let cuDNN time its convolution algorithms per shape; off (default) as in the web UIs. "
                        "On, the first call of each shape takes much longer")
    p.add_argument("--runs", type=int, default=3, help="timed calls per row, after --warmup; the median is shown")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (the first one's time is shown)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png")
    return p


def _dtypes(args, caps):
    if args.dtypes is None:
        return [main_dtype(caps)]
    if args.dtypes.strip() == "all":
        return list(DTYPES)
    dtypes = list(dict.fromkeys(_csv(args.dtypes, "--dtypes")))
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise UsageError(f"unknown dtype {unknown[0]!r}: choose from {', '.join(DTYPES)}")
    return dtypes


def tile_size(text):
    """--tile-size through the extension's own parser and limits (options.py), or a UsageError."""
    if text is None:
        return None
    try:
        return vae_options.parse_strict("tile_size", text)
    except vae_options.BadValue as error:
        raise UsageError(f"--tile-size: {error}, not {text!r}") from None


def variants_from(args, caps, sizes):
    """The rows to run, in order: plain fp32, plain 16-bit, ours, ours tiled beside diffusers tiled,
    offload and speed variants."""
    dtypes = _dtypes(args, caps)
    main = next((d for d in dtypes if d != "fp32"), "fp32")
    offloads = _csv(args.offload, "--offload") if args.offload is not None else []
    for mode in offloads:
        if mode not in OFFLOAD_CHOICES:
            raise UsageError(f"unknown offload mode {mode!r}: choose from {', '.join(OFFLOAD_CHOICES)}")
    combos = _csv(args.speed, "--speed") if args.speed is not None else []
    for combo in combos:
        if any(f not in SPEED_FLAGS for f in combo.split("+")):
            raise UsageError(f"unknown speed option {combo!r}: choose from {', '.join(SPEED_FLAGS)} (join with +)")
    tile_px = tile_size(args.tile_size)

    # What was asked is what is measured: an emulated dtype runs as asked (the default dtypes are native).
    untiled = dict(tiling="off", nan_fallback=False, avoid_emulated=False)
    # The no-flag run times strict fp32 at its smallest size only (1.8 s a call at 2048² on an H100): it
    # must end within a minute; every PSNR still compares with strict fp32 at every size.
    strict_sizes = (min(sizes),) if args.sizes is None else ()
    variants = [] if args.skip_fp32_timing or args.tiled_only else fp32_rows(caps, args.tf32, strict_sizes)
    if not args.no_baseline and not args.tiled_only:
        variants += [runner.Variant(f"diffusers {d}", d, plain=True) for d in dtypes if d in ("bf16", "fp16")]
    if not args.tiled_only:
        if args.dtypes is None and auto_dtype(caps) != main:
            # what the product runs by default on this device (mixed on a GPU with fp16 and bf16), beside main
            variants.append(runner.Variant(f"vaeprec auto ({auto_dtype(caps)})", auto_dtype(caps),
                                           options=VaeOptions(dtype="auto", **untiled)))
        variants += [runner.Variant(f"vaeprec {d}", d, options=VaeOptions(dtype=d, **untiled)) for d in dtypes]

    if args.tiling is None:          # the default: one tiled row, the main dtype at the largest size
        tiled_dtypes, only, mode, label = [main], (max(sizes),), "always", "tiled"
        tile_px = default_tile_px(max(sizes)) if tile_px is None else tile_px
    elif args.tiling != "off":
        tiled_dtypes, only = dtypes, ()
        mode, label = ("always", "tiled") if args.tiling == "on" else ("auto", "tiling auto")
    else:
        tiled_dtypes, only = [], ()
    tile_px = tile_px or 0
    variants += [runner.Variant(f"vaeprec {d} {label}", d, options=VaeOptions(
        dtype=d, tiling=mode, tile_size=tile_px, nan_fallback=False, avoid_emulated=False), limited_memory=True,
        sizes=only)
        for d in tiled_dtypes]
    if tiled_dtypes and not args.no_baseline:
        # diffusers' own tiling on a copy in the main dtype, in the same free memory: the seamed answer
        variants.append(runner.Variant(f"diffusers {main} tiled", main, plain=True, tiled=True, tile_px=tile_px,
                                       limited_memory=True, sizes=only))

    if args.tiled_only:
        if not any(v.is_tiled for v in variants):
            raise UsageError("--tiled-only with --tiling off leaves no rows")
        return variants
    variants += [runner.Variant(f"vaeprec {main} {m}", main, options=VaeOptions(
        dtype=main, offload=m, **untiled)) for m in offloads]
    for combo in combos:
        chosen = {name: value for f in combo.split("+") for name, value in SPEED_FLAGS[f].items()}
        variants.append(runner.Variant(f"vaeprec {main} {combo}", main, options=VaeOptions(
            dtype=main, **untiled, **chosen)))
    return variants


def baseline_of(variants):
    """The row the x columns compare with: plain fp32 as the web UIs run it (TF32 on CUDA)."""
    for name in (FP32_NAMES[True], FP32_NAMES[None], FP32_NAMES[False]):
        if any(v.name == name for v in variants):
            return name
    return None


def device_from(text):
    """The --device asked for, checked to exist here (else a UsageError naming what torch sees)."""
    if not text:
        return best_device()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a torch device (cpu, cuda, cuda:1, mps)")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise UsageError(f"--device {text} asked for, but torch sees no CUDA device")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {text} asked for, but torch sees {count} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UsageError(f"--device {text} asked for, but torch sees no MPS device")
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception as error:  # noqa: BLE001 - any failure means the device is not usable
            raise UsageError(f"--device {text} cannot be used: {error}")
    return device


def _numbers(args):
    if args.batch < 1 or args.runs < 1 or args.warmup < 0:
        raise UsageError("--batch and --runs must be at least 1, --warmup at least 0")
    if args.free_gb is not None and not (math.isfinite(args.free_gb) and args.free_gb >= 0):
        raise UsageError(f"--free-gb must be a number of GB from 0 up, not {args.free_gb}")
    if args.cap_gb is not None and not (math.isfinite(args.cap_gb) and args.cap_gb > 0):
        raise UsageError(f"--cap-gb must be a number of GB above 0, not {args.cap_gb}")
    if not 0 <= args.seed < 2**63:
        raise UsageError("--seed must be from 0 to 2**63-1")


def model_from(args):
    """(the VAE to run, a note or None): --vae's file when given, its architecture read from the file
    (so it wins over --arch); else the embedded architecture with seeded random weights."""
    if args.vae:
        note = f"--arch {args.arch} is ignored: --vae's file sets the architecture" if args.arch else None
        return models.load_file(args.vae), note
    return models.build(args.arch or "sd", args.seed), None


def _seconds_since_start():
    """Since the process started, imports included: what `time` on the command line reports."""
    try:
        import psutil
        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - missing or refused (a sandbox): since this module's import instead
        return time.time() - _IMPORTED_AT


_IMPORTED_AT = time.time()


def _one_line(error):
    return " ".join(str(error).split())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "bench":
        print("usage: python -m lib_vaeprec bench [options]   (--help for the options)", file=sys.stderr)
        return 2
    try:
        args = parser().parse_args(argv[1:])
    except SystemExit as exit_:      # --help
        return 0 if exit_.code == 0 else 2
    except UsageError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    try:
        _numbers(args)
        device = device_from(args.device)
        caps = caps_of(device)
        if args.free_gb is None:
            no_flags = device.type == "cuda" and args.tiling is None and args.sizes is None
            args.free_gb = DEFAULT_FREE_GB if no_flags else 0.0
        elif args.free_gb and device.type != "cuda":
            # said once, and then nowhere claimed: the legend and the chart say what ran
            print(f"note: --free-gb applies to CUDA only; the tiled rows run with all memory on {device}",
                  file=sys.stderr)
            args.free_gb = 0.0
        if args.first_call or args.no_reference:
            args.no_encode = True
        sizes = _sizes(args.sizes) if args.sizes is not None else default_sizes(caps)
        variants = variants_from(args, caps, sizes)
        report.prepare_out_dir(args.out)
        vae, note = model_from(args)
        if note:
            print(f"note: {note}", file=sys.stderr)
        ops = ["decode"] + ([] if args.no_encode else ["encode"])
        fit = footprint.plan(vae, device, sizes, args.batch, variants, ops)
    except (UsageError, report.OutDirError, models.VaeFileError, footprint.DoesNotFit) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    return run(args, device, sizes, variants, vae, fit, command=" ".join(["python -m lib_vaeprec", *argv]))


def run(args, device, sizes, variants, vae, fit, command=""):
    from diffusers.utils import logging as diffusers_logging
    from tqdm import tqdm
    diffusers_logging.set_verbosity_error()   # plain baselines cast with .to(dtype) on purpose
    ops = 1 if args.no_encode else 2
    caps = caps_of(device)
    baseline = baseline_of(variants)
    tiled_tile_px = next((v.options.tile_size for v in variants if not v.plain and v.is_tiled), 0)
    meta = dict(device=caps.name or device.type, torch=torch.__version__, python=platform.python_version(),
                vae=args.vae or f"{args.arch or 'sd'} architecture, random weights (seed {args.seed})",
                baseline=baseline, reference="plain diffusers fp32, untiled"
                + (", strict (no TF32)" if device.type == "cuda" else ""),
                tf32=args.tf32 if device.type == "cuda" else "n/a",
                cudnn_benchmark=args.cudnn_benchmark, free_gb=args.free_gb, cap_gb=args.cap_gb, sizes=sizes,
                batch=args.batch,
                runs=args.runs, warmup=args.warmup, command=command)
    print(f"VAE: {meta['vae']} | device: {meta['device']} | torch {meta['torch']} | "
          f"variants: {', '.join(v.name for v in variants)}", flush=True)
    for line in fit.notes:
        print(line)
    total = ops * sum(1 for size in sizes for v in variants if v.runs_at(size))
    with cudnn_autotuning(args.cudnn_benchmark == "on"), tqdm(total=total, desc="bench", unit="run") as bar:
        rows = runner.run(vae, device, sizes, variants, batch=args.batch, warmup=args.warmup, runs=args.runs,
                          encode=not args.no_encode, seed=args.seed, progress=bar, free_gb=args.free_gb,
                          skipped=fit.skipped, tiled_reference=fit.tiled_reference,
                          reference_tile_px=tiled_tile_px or default_tile_px(max(sizes)), baseline=baseline,
                          say=bar.write, tf32_rows=args.tf32 != "off", cap_gb=args.cap_gb,
                          reference_after="none" if args.no_reference else args.first_call)
    meta["seconds"] = round(_seconds_since_start(), 1)
    meta["reference"] += "".join(f"; {s}px made tiled (untiled it does not fit)" for s in sizes
                                 if any(r.get("reference_tiled") for r in rows if r["size"] == s))
    print(report.legend(rows, meta))
    print(report.table(rows))
    for row in rows:
        if row.get("rungs_failed"):
            print(f"{row['variant']} {row['op']} {row['size']}px: rungs that failed: {'; '.join(row['rungs_failed'])}"
                  f" (ran on {'/'.join(row.get('ran_on', []))})")
    print(report.first_calls(rows, meta["seconds"]))
    if args.profile and device.type == "cuda":
        with cudnn_autotuning(args.cudnn_benchmark == "on"), runner.tf32(device, args.tf32 != "off"):
            meta["profile"] = _profile(vae, device, sizes, variants, args)
    try:
        json_path, png_path = report.write_all(rows, meta, args.out)
    except OSError as error:     # checked before the run, but a disk can fill up meanwhile
        print(f"error: could not write into --out {args.out} ({error.strerror or error}); the table above "
              "holds the results", file=sys.stderr)
        return 1
    print(f"wrote {json_path} and {png_path}")
    return 0


def _profile(vae, device, sizes, variants, args):
    from ..engine import VaeEngine
    from . import profile
    # the last of ours in a 16-bit dtype: a --speed variant when there is one
    main = next((v for v in reversed(variants) if not v.plain and not v.is_tiled and v.options.dtype != "fp32"),
                variants[-1])
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
