"""The benchmark's outputs: a table on the terminal, a JSON file, a PNG chart."""
import json
import os
import tempfile

from . import measure

# (row key, header). Columns empty in every row (peak memory on a CPU, PSNRtile without tiling, host
# memory before the engine reports it) are left out of the table.
COLUMNS = [("size", "size"), ("op", "op"), ("variant", "variant"), ("ms", "ms"), ("x_time", "xfp32"),
           ("first_ms", "1st ms"), ("peak_mib", "peakMiB"), ("x_peak", "xfp32"), ("host_peak_mib", "hostMiB"),
           ("psnr", "psnr"), ("psnr_vs_untiled", "PSNRtile"), ("max_abs", "maxerr"), ("nonfinite", "NaN"),
           ("tiles", "tiles"), ("kernels", "kernels")]
ALWAYS = {"size", "op", "variant", "ms", "psnr", "nonfinite"}
NAMING = {"size", "op", "variant"}
NONFINITE_MARK = "n/a"     # PSNR and max error of a result holding NaN/Inf: no figure describes it


class OutDirError(Exception):
    pass


def prepare_out_dir(path):
    """Checks, before the run rather than after it, that --out is or can become a folder that takes
    files. Leaves nothing behind: a folder that does not exist yet is made when the results are written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutDirError(f"--out {path} is a file, not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutDirError(f"--out {path} cannot be made: {existing} is a file, not a folder")
    try:
        # a file where the folder exists, else a folder where the first missing one would go
        probe = tempfile.TemporaryFile if existing == os.path.abspath(path) else tempfile.TemporaryDirectory
        with probe(dir=existing):
            pass
    except OSError as error:
        raise OutDirError(f"--out {path} is not writable ({error.strerror or type(error).__name__})")


def _cell(row, name):
    if "error" in row and name == "ms":
        return "OOM" if row["error"] == "out of memory" else "skipped"
    if "error" in row and name not in NAMING:
        return "-"
    value = row.get(name)
    if value is None and name in ("psnr", "max_abs", "psnr_vs_untiled") and row.get("nonfinite"):
        return NONFINITE_MARK
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def columns(rows):
    return [(name, head) for name, head in COLUMNS
            if name in ALWAYS or any(row.get(name) is not None for row in rows)]


def table(rows):
    cols = columns(rows)
    cells = [[head for _, head in cols]] + [[_cell(row, name) for name, _ in cols] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if name == "variant" else c.rjust(w)
                       for c, w, (name, _) in zip(line, widths, cols)) for line in cells]
    notes = sorted({f"{row['variant']} at {row['size']}px: {row['error']}" for row in rows if "error" in row})
    return "\n".join(lines + notes)


def markdown(rows):
    cols = columns(rows)
    head = "| " + " | ".join(h for _, h in cols) + " |"
    rule = "|" + "---|" * len(cols)
    body = ["| " + " | ".join(_cell(row, n) for n, _ in cols) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def legend(rows, meta):
    """How to read the table, in the words of this run."""
    lines = []
    if meta.get("baseline"):
        lines.append(f"xfp32: time and peak memory against {meta['baseline']}"
                     + (" (fp32 as the web UIs run it)" if "TF32" in meta["baseline"] else ""))
    if any("strict" in row["variant"] for row in rows):
        lines.append("fp32 (TF32): TF32 on, as the web UIs run fp32; fp32 (strict): TF32 off. "
                     "All other rows run with TF32 on")
    lines.append("psnr: dB against strict fp32, untiled (99 = identical); PSNRtile: a tiled row against the "
                 "untiled row of its dtype; 1st ms: the first call (weights cast, the shape met for the first time)")
    if any(row.get("nonfinite") for row in rows):
        lines.append(f"NaN: samples holding NaN/Inf; their PSNR and maxerr read {NONFINITE_MARK}")
    if meta.get("free_gb") and any("tiled" in row["variant"] for row in rows):
        lines.append(f"tiled rows: run with only {meta['free_gb']:g} GB of GPU memory free (as on a small card); "
                     "the other rows with all of it")
    return "\n".join(lines)


def first_calls(rows, seconds):
    """One line: how long the first (cold) calls took, the slowest one named."""
    timed = [r for r in rows if r.get("first_ms") is not None]
    if not timed:
        return f"{seconds:.1f} s since the process started"
    slowest = max(timed, key=lambda r: r["first_ms"])
    total = sum(r["first_ms"] for r in timed) / 1000
    return (f"first calls: {total:.1f} s in all, the slowest {slowest['first_ms'] / 1000:.2f} s "
            f"({slowest['variant']}, {slowest['op']} {slowest['size']}px); {seconds:.1f} s since the process started")


def write_json(rows, meta, path):
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


# ----- the chart -----

def _colour(row):
    """One colour per family: fp32 baselines grey, plain diffusers blue, ours orange; tiled rows darker."""
    if row.get("plain") and row.get("tiled"):
        return "#2b6cb0"
    if row["variant"].startswith("diffusers fp32"):
        return "#bdbdbd" if "strict" in row["variant"] else "#8c8c8c"
    if row.get("plain"):
        return "#90cdf4"
    return "#c05621" if row.get("tiled") else "#f6ad55"


def _ratio(row, key):
    if row.get(key) is None:
        return ""
    return "  (baseline)" if row.get("baseline") else f"  {row[key]:.2f}×"


def _db(value):
    return "identical" if value >= measure.IDENTICAL_DB else f"{value:.1f} dB"


def _value_text(row, metric):
    if metric == "ms":
        return (f"{row['ms']:.0f} ms" if row["ms"] >= 10 else f"{row['ms']:.1f} ms") + _ratio(row, "x_time")
    if metric == "peak_mib":
        text = f"{row['peak_mib']:.0f} MiB" + _ratio(row, "x_peak")
        if row.get("host_peak_mib") is not None:
            text += f"  +{row['host_peak_mib']:.0f} host"
        return text
    text = _db(row["psnr"])
    if row.get("psnr_vs_untiled") is not None:
        vs = row["psnr_vs_untiled"]
        text += f" · vs untiled: {_db(vs)}"
    return text


def _bar_value(row, metric):
    value = row.get(metric)
    if metric == "psnr" and value is not None and value >= measure.IDENTICAL_DB:
        return None      # identical to the reference: a bar to 99 would dwarf the others
    return value


def _blank_text(row, metric):
    if "error" in row:
        return "out of memory" if row["error"] == "out of memory" else "skipped: does not fit"
    if metric == "psnr" and row.get("psnr") is None and row.get("nonfinite"):
        return f"non-finite ({row['nonfinite']} of {row['batch']})"
    if metric == "psnr" and row.get("psnr") is not None:
        return _value_text(row, metric)
    return "not measured"


# (row key, panel title, relative panel width)
METRICS = [("ms", "time, ms", 1.0), ("peak_mib", "peak extra GPU memory, MiB", 1.0),
           ("psnr", "PSNR vs fp32, dB", 0.9)]
FONT = 13


def figure(rows, meta=None):
    """The chart as a matplotlib Figure: one band of panels per (operation, size), with time, peak
    memory and PSNR side by side. Horizontal bars on linear axes from zero, each labelled with its
    value and its ratio to the baseline; the variant names on the axis, so no legend covers a bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = []
    for op in ("decode", "encode"):
        for size in sorted({r["size"] for r in rows if r["op"] == op}):
            groups.append((op, size, [r for r in rows if r["op"] == op and r["size"] == size]))
    metrics = [m for m in METRICS if m[0] != "peak_mib" or any(r.get("peak_mib") is not None for r in rows)]
    heights = [len(g[2]) * 0.5 + 0.8 for g in groups]
    height = sum(heights) + (0.6 if meta else 0.1)
    fig, axes = plt.subplots(len(groups), len(metrics), squeeze=False, sharey="row", layout="constrained",
                             figsize=(4.4 * sum(m[2] for m in metrics) + 2.8, height),
                             gridspec_kw=dict(height_ratios=heights, width_ratios=[m[2] for m in metrics]))
    for i, (op, size, picked) in enumerate(groups):
        positions = list(range(len(picked)))[::-1]       # the first row at the top
        for j, (metric, title, _width) in enumerate(metrics):
            ax = axes[i][j]
            values = [_bar_value(r, metric) for r in picked]
            ax.barh(positions, [v or 0 for v in values], height=0.72, color=[_colour(r) for r in picked],
                    edgecolor="#333333", linewidth=0.5)
            top = max((v for v in values if v is not None), default=1.0) or 1.0
            ax.set_xscale("linear")
            ax.set_xlim(0, top * (2.2 if metric == "psnr" else 1.8))   # from zero; room for the labels
            if not any(v is not None for v in values):
                ax.set_xticks([])              # nothing drawn (all identical, or not measured)
            for y, row, value in zip(positions, picked, values):
                text = _value_text(row, metric) if value is not None else _blank_text(row, metric)
                ax.text((value or 0) + top * 0.02, y, text, va="center", ha="left", fontsize=FONT - 1)
            ax.set_yticks(positions)
            ax.set_yticklabels([r["variant"] for r in picked], fontsize=FONT)
            ax.tick_params(axis="x", labelsize=FONT - 3)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.grid(axis="x", color="#e2e2e2", linewidth=0.6)
            ax.set_axisbelow(True)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            ax.set_title(f"{op} {size}²: {title}", fontsize=FONT, loc="left")
    if meta:
        batch = f", batch {meta['batch']}" if meta.get("batch", 1) != 1 else ""
        title = f"{meta.get('vae', 'VAE')} on {meta.get('device', '?')}{batch}"
        if meta.get("baseline"):
            title += f"\n× = ratio to {meta['baseline']}"
        if meta.get("free_gb") and any("tiled" in row["variant"] for row in rows):
            title += f"; tiled rows with {meta['free_gb']:g} GB of GPU memory free"
        fig.suptitle(title, fontsize=FONT + 1, x=0.01, ha="left")
    return fig


def plot(rows, path, meta=None):
    import matplotlib.pyplot as plt
    fig = figure(rows, meta)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(rows, meta, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, "bench.json"), os.path.join(out_dir, "bench.png")
    write_json(rows, meta, json_path)
    plot(rows, png_path, meta)
    return json_path, png_path
