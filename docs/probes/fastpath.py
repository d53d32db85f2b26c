"""The probe behind the H200 fast-path tables in docs/benchmarks.md: several cases in one process on one code
tree (the SD VAE architecture, seed 0, through lib_vaeprec.apply, or plain diffusers), each with its first
call's seconds, the median of CUDA-event timings after two warm-up calls, the allocator's peak above the
level before the last call, and PSNR against the strict fp32 decode/encode of the same input (made first, with
TF32 off; timed calls with TF32 on, as the web UIs run). Optionally a torch.profiler table of GPU kernel time
and a check of the Triton kernels against their torch equivalents.

    python docs/probes/fastpath.py --tree . --label new --check --profile auto:decode:1024 \
        --cases auto:decode:1024:10,bf16:decode:1024:10,auto:decode:2048:5,auto:encode:1024:10
"""
import argparse, json, math, os, statistics, sys, time
p = argparse.ArgumentParser()
p.add_argument("--tree", required=True)
p.add_argument("--cases", required=True)    # mode:op:size:runs,...  mode diffusers-bf16|auto|bf16
p.add_argument("--profile", default="")     # mode:op:size to profile
p.add_argument("--label", default="")
p.add_argument("--check", action="store_true")
a = p.parse_args()
sys.path.insert(0, os.path.abspath(a.tree))
t_start = time.time()
import torch
torch.backends.cudnn.benchmark = False
from lib_vaeprec.bench import models
import lib_vaeprec
dev = torch.device("cuda")
base_vae = models.build("sd", 0).to(dev)
g = torch.Generator().manual_seed(1)
inputs, refs = {}, {}
def inp(op, size):
    if (op, size) not in inputs:
        if op == "decode":
            inputs[(op, size)] = torch.randn(1, 4, size // 8, size // 8, generator=g).to(dev)
        else:
            inputs[(op, size)] = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(dev)
    return inputs[(op, size)]
def call(m, op, x):
    return m.decode(x).sample if op == "decode" else m.encode(x).latent_dist.mean
def ref(op, size):
    if (op, size) not in refs:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad():
            refs[(op, size)] = call(base_vae, op, inp(op, size)).float()
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    return refs[(op, size)]
cases = [c.split(":") for c in a.cases.split(",")]
for mode, op, size, runs in cases:
    ref(op, int(size))
vae, dtype_now, engine = base_vae, None, None
for mode, op, size, runs in cases:
    size, runs = int(size), int(runs)
    x = inp(op, size); r = ref(op, size)
    if mode.startswith("diffusers-"):
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode.split("-")[1]]
        vae = base_vae.to(dt); xin = x.to(dt)
        fn = lambda: call(vae, op, xin)
    else:
        engine = lib_vaeprec.apply(base_vae, dtype=mode, tiling="off")
        fn = lambda: call(base_vae, op, x)
    def once():
        with torch.no_grad():
            return fn()
    torch.cuda.synchronize(); t0 = time.time(); out = once(); torch.cuda.synchronize(); first_s = time.time() - t0
    for _ in range(2):
        out = once()
    times = []
    for i in range(runs):
        if i == runs - 1:
            del out
            torch.cuda.synchronize(); b0 = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        s_, e_ = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s_.record(); out = once(); e_.record(); torch.cuda.synchronize()
        times.append(s_.elapsed_time(e_))
    peak = (torch.cuda.max_memory_allocated() - b0) / 2**20
    o = out.float()
    if op == "decode":
        mse = torch.mean(((o.clamp(-1, 1) + 1) / 2 - (r.clamp(-1, 1) + 1) / 2) ** 2).item(); peak2 = 1.0
    else:
        mse = torch.mean((o - r) ** 2).item(); peak2 = (r.max() - r.min()).item() ** 2
    row = dict(tree=a.label, mode=mode, op=op, size=size, ms=round(statistics.median(times), 2), min_ms=round(min(times), 2),
               peak_mib=round(peak, 1), psnr=round(10 * math.log10(peak2 / mse), 2) if mse else 99, first_s=round(first_s, 2))
    if engine is not None and not mode.startswith("diffusers-") and engine.last_call is not None:
        lc = engine.last_call
        row["ran"] = f"{lc.dtype} {lc.blocks} {getattr(lc, 'kernels', '')}".strip()
    print("ROW " + json.dumps(row), flush=True)
    if a.profile == f"{mode}:{op}:{size}":
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                o2 = once()
            torch.cuda.synchronize()
        tot, cnt = {}, {}
        for ev in prof.key_averages():
            t = getattr(ev, "self_device_time_total", 0) or 0
            if t:
                tot[ev.key] = tot.get(ev.key, 0) + t; cnt[ev.key] = cnt.get(ev.key, 0) + ev.count
        whole = sum(tot.values())
        print(f"PROFILE {a.label} {mode} {op} {size}: GPU kernel time per call {whole/3/1000:.2f} ms")
        for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:22]:
            print(f"  {100*v/whole:5.1f}%  {v/3/1000:7.3f} ms  n={cnt[k]//3:4d}  {k[:110]}")
    if mode.startswith("diffusers-"):
        vae = base_vae = base_vae.float()
if a.check:
    from lib_vaeprec import groupnorm_kernels as K
    worst = 0.0
    for fmt in (torch.channels_last, torch.contiguous_format):
        for shape, groups in (((1, 512, 64, 64), 32), ((2, 128, 96, 80), 32), ((1, 96, 40, 24), 24)):
            norm = torch.nn.GroupNorm(groups, shape[1], eps=1e-6)
            with torch.no_grad():
                norm.weight.normal_(); norm.bias.normal_()
            norm = norm.cuda().half()
            x = (torch.randn(*shape, device="cuda") * 3 + 2).half().contiguous(memory_format=fmt)
            pre = torch.randn(shape[1], device="cuda").half()
            y = K.group_norm(norm, x, silu=True, pre_bias=pre)
            e = K.reference.group_norm(norm, x, silu=True, pre_bias=pre).float()
            worst = max(worst, ((y.float() - e).abs() / (e.abs() + 1)).max().item())
    s = torch.randn(3, 16384, device="cuda") * 5
    sm = (K.softmax(s, torch.float16).float() - torch.softmax(s, -1)).abs().max().item()
    print(f"CHECK groupnorm kernels worst rel err {worst:.2e}; softmax max abs err {sm:.2e}", flush=True)
print(f"DONE {a.label} in {time.time()-t_start:.1f} s", flush=True)
