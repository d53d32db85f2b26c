"""Where a decode/encode spends its time and memory: per stage of the coder, and per kind of GPU op.

`python -m lib_vaeprec bench --profile` prints this for the main dtype at each size.
"""
import torch

from .measure import sync

OP_KINDS = (("conv", ("conv", "cudnn", "implicit", "sm90", "xmma", "gemm", "cutlass")),
            ("norm", ("group_norm", "norm")), ("attention", ("attention", "fmha", "softmax", "bmm")),
            ("upsample", ("upsample", "nearest")), ("activation", ("silu", "sigmoid")),
            ("cast/copy", ("copy", "to_copy", "cast", "contiguous")), ("add/mul", ("add", "mul")))


def _stages(coder):
    for name, child in coder.named_children():
        if isinstance(child, torch.nn.ModuleList):
            for i, sub in enumerate(child):
                yield f"{name}.{i}", sub
        elif any(True for _ in child.parameters()):
            yield name, child


def stage_breakdown(coder, run, device):
    """[(stage, ms, peak MiB above the level at the stage's start)] for one call of run()."""
    rows, marks = [], {}

    def pre(name):
        def hook(module, args):
            sync(device)
            marks[name] = (torch.cuda.memory_allocated(device), torch.cuda.Event(enable_timing=True),
                           torch.cuda.Event(enable_timing=True))
            torch.cuda.reset_peak_memory_stats(device)
            marks[name][1].record()
        return hook

    def post(name):
        def hook(module, args, output):
            base, start, end = marks[name]
            end.record()
            sync(device)
            rows.append((name, start.elapsed_time(end), (torch.cuda.max_memory_allocated(device) - base) / 2**20))
        return hook

    handles = []
    for name, stage in _stages(coder):
        handles += [stage.register_forward_pre_hook(pre(name)), stage.register_forward_hook(post(name))]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return rows


def op_breakdown(run, device):
    """{op kind: share of GPU time} for one call of run()."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        sync(device)
    totals = {}
    for event in prof.key_averages():
        t = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if not t or event.key.startswith("aten::") or event.key.startswith("cuda"):
            continue
        name = event.key.lower()
        kind = next((k for k, words in OP_KINDS if any(w in name for w in words)), "other")
        totals[kind] = totals.get(kind, 0) + t
    whole = sum(totals.values()) or 1
    return {k: round(v / whole, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
