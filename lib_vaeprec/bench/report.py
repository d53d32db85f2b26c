"""The benchmark's outputs: a table on the terminal, a JSON file, a PNG plot."""
import json
import os

COLUMNS = [("size", 5), ("op", 6), ("variant", 26), ("ms", 9), ("x_time", 7), ("peak_mib", 9), ("x_peak", 7),
           ("psnr", 6), ("psnr_vs_untiled", 8), ("max_abs", 8), ("nonfinite", 4), ("tiles", 5),
           ("cached_mib", 8)]
HEADERS = {"x_time": "xfp32", "x_peak": "xfp32", "peak_mib": "peakMiB", "psnr_vs_untiled": "PSNRtile",
           "nonfinite": "NaN", "max_abs": "maxerr", "cached_mib": "cacheMiB"}


def _cell(value):
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(rows):
    lines = ["  ".join(HEADERS.get(name, name).rjust(width) for name, width in COLUMNS)]
    for row in rows:
        lines.append("  ".join(_cell(row.get(name)).rjust(width) for name, width in COLUMNS))
    return "\n".join(lines)


def markdown(rows):
    names = [name for name, _ in COLUMNS]
    head = "| " + " | ".join(HEADERS.get(n, n) for n in names) + " |"
    rule = "|" + "---|" * len(names)
    body = ["| " + " | ".join(_cell(row.get(n)) for n in names) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_json(rows, meta, path):
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in rows})
    metrics = ["ms"] + (["peak_mib"] if any(r.get("peak_mib") for r in rows) else [])
    fig, axes = plt.subplots(len(ops), len(metrics), figsize=(6.5 * len(metrics), 4 * len(ops)), squeeze=False)
    for i, op in enumerate(ops):
        picked = [r for r in rows if r["op"] == op]
        sizes = sorted({r["size"] for r in picked})
        variants = list(dict.fromkeys(r["variant"] for r in picked))
        width = 0.8 / max(1, len(variants))
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for k, name in enumerate(variants):
                values = [next((r[metric] or 0 for r in picked if r["size"] == s and r["variant"] == name), 0)
                          for s in sizes]
                ax.bar([x + k * width for x in range(len(sizes))], values, width, label=name)
            ax.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(sizes))])
            ax.set_xticklabels([f"{s}px" for s in sizes])
            ax.set_title(f"{op}: {'time (ms)' if metric == 'ms' else 'peak extra memory (MiB)'}")
            ax.set_yscale("log")
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_all(rows, meta, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, "bench.json"), os.path.join(out_dir, "bench.png")
    write_json(rows, meta, json_path)
    plot(rows, png_path)
    return json_path, png_path
