"""The bench's figures and outputs: PSNR of non-finite results, the table, the chart."""
import math

import pytest
import torch

from conftest import make_vae
from lib_vaeprec.bench import measure, report, runner


def _row(size, op, variant, ms, peak, psnr, plain=False, tiled=False, vs_untiled=None, nonfinite=0):
    return dict(size=size, batch=1, op=op, variant=variant, plain=plain, tiled=tiled, ms=ms, first_ms=ms * 2,
                peak_mib=peak, psnr=psnr, psnr_vs_untiled=vs_untiled, nonfinite=nonfinite, tiles=32 if tiled else 0,
                max_abs=0.1)


def h100_shaped_rows():
    """Rows shaped like the H100 tables of docs/benchmarks.md (2048² decode, 2 GB free)."""
    rows = [_row(2048, "decode", "diffusers fp32 (TF32)", 668.8, 19475.3, 70.0, plain=True),
            _row(2048, "decode", "diffusers fp32 (strict)", 1782.1, 12289, 99.0, plain=True),
            _row(2048, "decode", "diffusers bf16", 423.3, 9730.5, 45.77, plain=True),
            _row(2048, "decode", "vaeprec bf16", 210.2, 6145, 46.11),
            _row(2048, "decode", "vaeprec bf16 tiled", 342.3, 1381, 46.11, tiled=True, vs_untiled=54.94),
            _row(2048, "decode", "diffusers bf16 tiled", 894.0, 650, 34.5, plain=True, tiled=True, vs_untiled=34.6),
            _row(2048, "encode", "diffusers fp32 (TF32)", 464.2, 12290.6, 75.0, plain=True),
            _row(2048, "encode", "vaeprec bf16", 184.2, 6168.3, 61.16)]
    runner.add_ratios(rows, "diffusers fp32 (TF32)")
    return rows


def test_psnr_of_a_nonfinite_result_is_none_not_99():
    reference = torch.zeros(1, 3, 8, 8)
    for bad in (float("nan"), float("inf")):
        image = reference.clone()
        image[0, 0, 0, 0] = bad
        assert measure.image_psnr(image, reference) is None
        assert measure.latent_psnr(image, reference) is None
        assert measure.max_abs_error(image, reference) is None
    assert measure.image_psnr(reference, reference) == measure.IDENTICAL_DB


def test_a_nan_row_shows_the_count_and_no_psnr():
    """A real non-finite decode: fp16 overflows where fp32 does not (conv_in scaled past fp16's range)."""
    vae = make_vae()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e6)
    variant = runner.Variant("diffusers fp16", "fp16", plain=True)
    rows = runner.run(vae, torch.device("cpu"), [32], [variant], warmup=0, runs=1, encode=False)
    row = rows[0]
    assert row["nonfinite"] == 1 and row["psnr"] is None and row["max_abs"] is None
    header, line = report.table(rows).splitlines()[:2]
    psnr_end = header.index("psnr") + len("psnr")            # columns are right-aligned
    assert line[:psnr_end].split()[-1] == report.NONFINITE_MARK
    assert "NaN/Inf" in report.legend(rows, {})


def test_table_leaves_out_empty_columns_and_names_failed_rows():
    rows = h100_shaped_rows()
    rows.append(dict(size=2048, batch=1, op="decode", variant="diffusers fp32 (strict)", plain=True,
                     tiled=False, error="skipped: needs about 90.0 GB, 80.0 GB free on cuda"))
    text = report.table(rows)
    header = text.splitlines()[0]
    assert "hostMiB" not in header and "peakMiB" in header and "PSNRtile" in header
    assert "skipped" in text and "needs about 90.0 GB" in text


def _bar_labels(ax):
    return [t.get_text() for t in ax.texts]


@pytest.mark.parametrize("rows_of", ["h100", "cpu"])
def test_chart_linear_from_zero_with_ratios_and_psnr(rows_of):
    import matplotlib.pyplot as plt
    rows = h100_shaped_rows()
    if rows_of == "cpu":      # no peak memory on a CPU
        rows = [dict(r, peak_mib=None, x_peak=None) for r in rows]
    fig = report.figure(rows, dict(vae="sd", device="x", batch=1, baseline="diffusers fp32 (TF32)"))
    try:
        titles = [ax.get_title(loc="left") for ax in fig.axes]
        assert any("time" in t for t in titles) and any("PSNR" in t for t in titles)
        assert any("memory" in t for t in titles) == (rows_of == "h100")
        for ax in fig.axes:
            assert ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0
            # every bar from zero, none past the axis, none under a label or legend
            for bar in ax.patches:
                assert bar.get_x() == 0 and bar.get_width() <= ax.get_xlim()[1]
            assert ax.get_legend() is None
        time_ax = next(ax for ax in fig.axes if "decode 2048²: time" in ax.get_title(loc="left"))
        labels = _bar_labels(time_ax)
        assert labels[0] == "669 ms  (baseline)"
        assert "423 ms  0.63×" in labels and "210 ms  0.31×" in labels
        widths = [p.get_width() for p in time_ax.patches]
        # a 2x gain is drawn as half the bar, not a twentieth
        assert math.isclose(widths[2] / widths[3], 423.3 / 210.2)
        psnr_ax = next(ax for ax in fig.axes if "decode 2048²: PSNR" in ax.get_title(loc="left"))
        psnr_labels = _bar_labels(psnr_ax)
        assert "identical" in psnr_labels[1]              # strict fp32 is the reference: no bar to 99
        assert any("34.5 dB" in t and "34.6 dB" in t for t in psnr_labels)
        assert max(p.get_width() for p in psnr_ax.patches) < 99
    finally:
        plt.close(fig)


def test_chart_marks_nonfinite_and_failed_rows(tmp_path):
    rows = h100_shaped_rows()
    rows[3] = dict(rows[3], psnr=None, max_abs=None, nonfinite=1)
    rows.append(dict(size=2048, batch=1, op="encode", variant="vaeprec bf16 tiled", plain=False, tiled=True,
                     error="out of memory"))
    fig = report.figure(rows)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "non-finite (1 of 1)" in texts and "out of memory" in texts
    report.plot(rows, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 1000
