"""Plots: the files are real PNG/SVG images holding the numbers they claim, and a missing extra says how to install.

SVG output is text, so the tests read the labels matplotlib wrote (component sizes, the capacity line) back
out of it rather than trusting that a file appeared.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="the plot extra is not installed: pip install 'vramfit[plot]'")

from vramfit import plot
from vramfit.cli import main
from vramfit.errors import InvalidSetting, MissingExtra
from vramfit.result import Component, Estimate, MemoryBreakdown, Parameters, Peak
from vramfit.settings import Settings

GiB = 1024**3


def small_estimate() -> Estimate:
    memory = MemoryBreakdown(components=(
        Component(name="weights", bytes=6 * GiB), Component(name="kv_cache", bytes=2 * GiB),
        Component(name="cuda_context", bytes=GiB // 2, level="device")))
    return Estimate(model="toy", parameters=Parameters(total=3 * 10**9, trainable=0, active=3 * 10**9),
                    memory=memory, peak=Peak.of(memory), settings=Settings())


def test_breakdown_svg_labels_each_component_and_the_capacity(tmp_path: Path) -> None:
    path = plot.plot_breakdown(small_estimate(), tmp_path / "bar.svg", capacity_bytes=24 * GiB)
    svg = path.read_text()
    for label in ("weights 6.00 GiB", "kv_cache 2.00 GiB", "cuda_context 0.50 GiB", "GPU capacity 24.00 GiB",
                  "total 8.50 GiB"):
        assert label in svg


def test_breakdown_png_is_a_png(tmp_path: Path) -> None:
    path = plot.plot_breakdown(small_estimate(), tmp_path / "bar.png", units="GB")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_plot_draws_peaks_against_the_axis(tmp_path: Path) -> None:
    points = [plot.SweepPoint(value=b, allocated=b * GiB, reserved=b * GiB + GiB, device=b * GiB + 2 * GiB)
              for b in (1, 2, 4, 8)]
    svg = plot.plot_sweep(points, "batch", tmp_path / "sweep.svg", capacity_bytes=10 * GiB).read_text()
    assert "batch size (sequences per GPU)" in svg
    assert "GPU capacity 10.00 GiB" in svg
    assert "memory per GPU (GiB)" in svg


def test_validation_scatter_names_its_cases(tmp_path: Path) -> None:
    cases = [("llama-1b bs1", 3 * GiB, 3 * GiB + GiB // 10), ("qwen-0.6b bs8", 2 * GiB, 2 * GiB)]
    svg = plot.plot_validation(cases, tmp_path / "validate.svg").read_text()
    assert "llama-1b bs1" in svg
    assert "predicted = measured" in svg


def test_sweep_runs_the_real_estimate_at_each_value() -> None:
    import vramfit
    from vramfit.model.sources import load_model

    loaded = load_model("Qwen/Qwen3-0.6B")
    points = plot.sweep(loaded, Settings(), "context", [1024, 4096])
    for point, tokens in zip(points, (1024, 4096)):
        peak = vramfit.estimate(loaded, Settings().replace(seq_len=tokens)).peak
        assert (point.allocated, point.reserved, point.device) == (peak.allocated, peak.reserved, peak.device)


def test_default_sweep_values_cover_the_current_setting() -> None:
    assert plot.default_values("batch", Settings())[-1] == 256
    assert plot.default_values("context", Settings().replace(seq_len=262144))[-1] == 262144


def test_other_suffixes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSetting, match=r"\.png or \.svg"):
        plot.plot_breakdown(small_estimate(), tmp_path / "bar.jpg")


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(MissingExtra, match=r"pip install 'vramfit\[plot\]'"):
        plot.plot_breakdown(small_estimate(), tmp_path / "bar.svg")


def test_cli_writes_both_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bar, sweep = tmp_path / "bar.svg", tmp_path / "sweep.svg"
    assert main(["estimate", "Qwen/Qwen3-0.6B", "--gpu-memory", "24GiB", "--plot", str(bar),
                 "--plot-sweep", "batch", str(sweep)]) == 0
    assert "GPU capacity 24.00 GiB" in bar.read_text()
    assert "batch size" in sweep.read_text()
    assert f"wrote {bar}" in capsys.readouterr().err


def test_unwritable_path_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder" / "bar.svg"
    assert main(["estimate", "Qwen/Qwen3-0.6B", "--plot", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vramfit: error: --plot: cannot write")
    assert err.count("\n") == 1


@pytest.mark.parametrize("flags", [["--plot", "bar.jpg"], ["--plot-sweep", "heads", "s.svg"],
                                   ["--plot-sweep", "batch", "s.pdf"]])
def test_bad_plot_flags_fail_before_any_output(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    assert main(["estimate", "Qwen/Qwen3-0.6B", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("vramfit: error: --plot")
