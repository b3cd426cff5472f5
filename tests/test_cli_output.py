"""The output layer: table, JSON, CSV, Markdown and --explain renderings, units, progress bars and errors.

Snapshot tests run the real CLI (`main([...]) == 0`) on a fixed, hand-checkable estimate, so they pin the
rendering and not the memory model (whose numbers the memory tests own). Regenerate the snapshots after an
intended change with: VRAMFIT_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_cli_output.py
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

import vramfit.cli.estimate as cli_estimate
from vramfit.cli import main
from vramfit.progress import Progress, progress
from vramfit.report import component_rows, render_estimate, render_rows, substitute
from vramfit.result import Component, Estimate, MemoryBreakdown, Parameters, Peak
from vramfit.settings import Settings

SNAPSHOTS = Path(__file__).parent / "snapshots"

# Llama-3.1-8B, bf16, batch 4 x 8192 tokens: weights 8,030,261,248 x 2 bytes; KV cache 2 (K and V) x 32 layers
# x 4 x 8192 x 8 kv heads x 128 head_dim x 2 bytes; a CUDA context of 500 MiB. Checkable by hand.
WEIGHTS = Component(name="weights", bytes=8_030_261_248 * 2, formula="N * bytes",
                    inputs={"N": 8_030_261_248, "bytes": 2}, source="parameters from config.json",
                    textbook="4 * N (fp32 always); here the stored dtype's 2 bytes")
KV = Component(name="kv_cache", bytes=2 * 32 * 4 * 8192 * 8 * 128 * 2,
               formula="2 * L * B * T * kv_heads * head_dim * bytes",
               inputs={"L": 32, "B": 4, "T": 8192, "kv_heads": 8, "head_dim": 128, "bytes": 2},
               source="transformers DynamicCache: (batch, kv_heads, tokens, head_dim) per layer, K and V",
               textbook="2 * b * s * h * bytes * L = 2 * 4 * 8192 * 4096 * 2 * 32: counts all 32 heads, "
                        "4x too large under grouped-query attention")
CONTEXT = Component(name="cuda_context", bytes=500 * 1024**2, level="device", formula="measured constant",
                    source="torch 2.x on H100, nvidia-smi minus reserved after torch.cuda.init()")


def fixed_estimate(settings: Settings | None = None) -> Estimate:
    memory = MemoryBreakdown(components=(WEIGHTS, KV, CONTEXT))
    return Estimate(model="meta-llama/Llama-3.1-8B",
                    parameters=Parameters(total=8_030_261_248, trainable=0, active=8_030_261_248),
                    memory=memory, peak=Peak.of(memory), settings=settings or Settings(),
                    notes=("KV cache in the compute dtype (bf16)",))


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI path runs for real (flags, settings, model loading by numbers), only the estimate is fixed."""
    monkeypatch.setattr(cli_estimate, "estimate", lambda model, settings: fixed_estimate(settings))


# The same model and workload by numbers, so --explain's seed figures are Llama-3.1-8B's at batch 4 x 8192.
LLAMA_8B = ["--params", "8B", "--hidden-size", "4096", "--layers", "32", "--heads", "32", "--kv-heads", "8",
            "--batch-size", "4", "--seq-len", "8192"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["estimate", *LLAMA_8B, *args]) == 0
    return capsys.readouterr().out


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("VRAMFIT_UPDATE_SNAPSHOTS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; if intended, regenerate (see this module's docstring)"


@pytest.mark.usefixtures("fixed")
@pytest.mark.parametrize(("name", "flags"), [
    ("estimate_table.txt", []),
    ("estimate_table_gb.txt", ["--units", "GB"]),
    ("estimate_explain.txt", ["--explain"]),
    ("estimate_csv.txt", ["--csv"]),
    ("estimate_markdown.txt", ["--markdown"]),
])
def test_estimate_output_matches_snapshot(capsys: pytest.CaptureFixture[str], name: str, flags: list[str]) -> None:
    check_snapshot(name, run_cli(capsys, *flags))


@pytest.mark.usefixtures("fixed")
def test_table_labels_every_size_with_its_unit(capsys: pytest.CaptureFixture[str]) -> None:
    gib = run_cli(capsys)
    gb = run_cli(capsys, "--units", "GB")
    assert "14.96 GiB" in gib    # 16,060,522,496 / 1024^3
    assert "16.06 GB" in gb      # 16,060,522,496 / 10^9
    assert " GB" not in gib
    assert "GiB" not in gb


@pytest.mark.usefixtures("fixed")
def test_json_is_bytes_and_explain_adds_derivations(capsys: pytest.CaptureFixture[str]) -> None:
    plain = json.loads(run_cli(capsys, "--json"))
    assert plain == json.loads(json.dumps(fixed_estimate(plain_settings()).to_dict()))
    explained = json.loads(run_cli(capsys, "--json", "--explain"))
    kv = explained["components"][1]
    assert kv["substituted"] == "2 * 32 * 4 * 8,192 * 8 * 128 * 2"
    assert kv["bytes"] == 2 * 32 * 4 * 8192 * 8 * 128 * 2


def plain_settings() -> Settings:
    from vramfit.cli import build_parser
    from vramfit.cli.common import model_from_args, settings_from_args

    args = build_parser().parse_args(["estimate", *LLAMA_8B])
    return settings_from_args(args, model_from_args(args))


@pytest.mark.usefixtures("fixed")
def test_csv_parses_and_its_rows_add_up_to_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    rows = list(csv.DictReader(io.StringIO(run_cli(capsys, "--csv"))))
    assert [r["component"] for r in rows] == ["weights", "kv_cache", "cuda_context", "total"]
    assert sum(int(r["bytes"]) for r in rows[:-1]) == int(rows[-1]["bytes"])
    assert list(rows[0]) == ["component", "level", "size (GiB)", "bytes"]


def test_output_formats_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["estimate", "--params", "8B", "--json", "--csv"])
    assert "not allowed with" in capsys.readouterr().err


def test_every_estimate_flag_states_its_default() -> None:
    from vramfit.cli import build_parser

    parser = build_parser()
    estimate_parser = parser._subparsers._group_actions[0].choices["estimate"]  # type: ignore[union-attr]
    silent = [a.option_strings[0] for a in estimate_parser._actions
              if a.option_strings and a.help and "default" not in a.help and a.dest not in {"help"}
              and a.help != "show this help message and exit"]
    assert silent == []


@pytest.mark.parametrize(("formula", "inputs", "expected"), [
    ("2 * L * B", {"L": 32, "B": 4}, "2 * 32 * 4"),
    ("heads * kv_heads", {"heads": 32, "kv_heads": 8}, "32 * 8"),          # no partial replacement
    ("N * bytes_per_param", {"N": 1_000_000, "bytes_per_param": 0.5}, "1,000,000 * 0.5"),
    ("B * T", {}, "B * T"),
    ("bytes in the format", {"format": "bf16", "bytes": 2}, "2 in the format"),   # text stays out
    ("n * flag", {"n": 3, "flag": True}, "3 * flag"),
])
def test_substitute_replaces_whole_names_only(formula: str, inputs: dict[str, Any], expected: str) -> None:
    assert substitute(formula, inputs) == expected


def test_rows_render_in_every_format() -> None:
    headers, rows = ["gpu", "max batch"], [["H100", 64], ["A|B", 8]]
    assert render_rows(headers, rows, "table").splitlines()[2] == "H100         64"
    assert render_rows(headers, rows, "markdown").splitlines()[1] == "| --- | ---: |"
    assert "A\\|B" in render_rows(headers, rows, "markdown")
    assert json.loads(render_rows(headers, rows, "json")) == [{"gpu": "H100", "max batch": 64},
                                                              {"gpu": "A|B", "max batch": 8}]
    assert render_rows(headers, rows, "csv") == "gpu,max batch\nH100,64\nA|B,8"


def test_component_rows_end_with_the_total() -> None:
    total = 16_060_522_496 + 4_294_967_296 + 524_288_000   # weights + KV cache + CUDA context, by hand
    assert component_rows(fixed_estimate(), "GB")[-1] == ["total", "", "20.88", total]


def test_unknown_units_are_an_error_naming_the_choices() -> None:
    from vramfit.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match="GiB"):
        render_estimate(fixed_estimate(), "table", "gigs")


def test_error_is_one_line_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--params", "8B", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("vramfit: error: batch_size")
    assert "Traceback" not in err


def test_progress_draws_only_when_asked_and_ends_its_line() -> None:
    quiet = io.StringIO()
    assert list(progress(range(3), label="x", stream=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""                  # not a terminal: nothing drawn
    loud = io.StringIO()
    assert list(progress(range(4), label="sweep", stream=loud, force=True)) == [0, 1, 2, 3]
    assert "sweep [########################] 4/4 100%" in loud.getvalue()
    assert loud.getvalue().endswith("\n")


def test_progress_without_total_counts() -> None:
    bar = Progress(None, label="trace", stream=io.StringIO(), force=True)
    bar.advance(5)
    assert bar.line().startswith("trace 5 done")


def test_seed_figures_sit_beside_ours_for_a_real_model() -> None:
    """The seeds' KV formula counts every query head: for Llama-3.1-8B (32 heads, 8 kv heads) it is 4x ours."""
    import vramfit
    from vramfit.report import with_textbook

    model = vramfit.load_model("meta-llama/Llama-3.1-8B")
    result = with_textbook(vramfit.estimate(model, batch_size=4, seq_len=8192), model)
    kv = next(c for c in result.memory.components if c.name == "kv_cache")
    seed = 2 * 4 * 8192 * 4096 * 2 * 32
    assert f"= {seed:,} bytes, {seed / kv.bytes:.2f}x ours" in kv.textbook
    assert "[S1]" in kv.textbook
    assert result.memory.total == vramfit.estimate(model, batch_size=4, seq_len=8192).memory.total
