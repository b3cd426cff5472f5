"""vramfit.sweep: the estimates of a grid equal estimate() at each point, and each point's settings are checked.

The sweep's fast path (Settings.points) validates the settings once and each point's Workload alone; these tests
pin that it answers exactly what estimate() answers and refuses every point estimate() would refuse, with the
same message.
"""

from __future__ import annotations

import json
import re

import pytest

import vramfit
from vramfit import InvalidSetting, Settings, estimate, load_model, sweep

MODEL = "Qwen/Qwen3-0.6B"


@pytest.mark.parametrize("base", [
    Settings(),                                                         # dtype "auto": resolved once
    Settings().replace(mode="training"),
    Settings().replace(mode="training", finetune="lora", grad_ckpt="full", grad_accum=2),
    Settings().replace(mode="training", gpus=4, zero_stage=3),
    Settings().replace(mode="inference", gpus=2, tensor=2, new_tokens=256),
])
def test_a_sweep_is_estimate_at_every_point_in_product_order(base: Settings) -> None:
    model = load_model(MODEL)
    batches, lengths = (1, 3, 8), (512, 4096)
    expected = [estimate(model, base, batch_size=b, seq_len=t) for b in batches for t in lengths]
    assert sweep(model, base, batch_size=batches, seq_len=lengths) == expected
    assert [(r.settings.workload.batch_size, r.settings.workload.seq_len) for r in expected] == \
        [(b, t) for b in batches for t in lengths]


def test_axes_beyond_the_workload_take_the_general_path_with_the_same_answers() -> None:
    model = load_model(MODEL)
    base = Settings().replace(mode="training", gpus=4)
    got = sweep(model, base, zero_stage=[0, 2, 3], batch_size=[1, 2])
    assert got == [estimate(model, base, zero_stage=z, batch_size=b) for z in (0, 2, 3) for b in (1, 2)]


def test_a_model_id_and_a_package_level_name() -> None:
    assert vramfit.sweep is sweep
    assert sweep(MODEL, batch_size=[2]) == [estimate(MODEL, batch_size=2)]


def test_an_axis_without_values_gives_no_estimates() -> None:
    assert sweep(MODEL, batch_size=[1, 2], seq_len=[]) == []


def _refusal(call: object) -> str:
    with pytest.raises(InvalidSetting) as error:
        call()  # type: ignore[operator]
    return str(error.value)


@pytest.mark.parametrize(("axes", "single"), [
    ({"batch_size": [1, 2, 0]}, {"batch_size": 0}),                        # a later point out of range
    ({"batch_size": [1, True]}, {"batch_size": True}),                     # a later value of the wrong type
    ({"seq_len": [4096, "512"]}, {"seq_len": "512"}),
    ({"seq_len": [4096, 1024], "new_tokens": [0, 2048]}, {"seq_len": 1024, "new_tokens": 2048}),
])
def test_a_later_point_is_refused_as_estimate_refuses_it(axes: dict[str, list[object]], single: dict[str, object]) -> None:
    """The first point is validated in full; a later one only by its Workload and _consistent. Each refusal
    must be estimate()'s own, word for word."""
    model = load_model(MODEL)
    base = Settings().replace(mode="training")
    assert _refusal(lambda: sweep(model, base, **axes)) == _refusal(lambda: estimate(model, base, **single))


def test_context_parallelism_longer_than_a_later_length_is_refused() -> None:
    """seq_len is read by a rule across parts (_consistent: the context-parallel ranks), not by the Workload
    alone: the fast path must still apply it."""
    model = load_model(MODEL)
    base = Settings().replace(mode="training", gpus=8, context=8, seq_len=4096)
    message = _refusal(lambda: sweep(model, base, seq_len=[4096, 4]))
    assert message == _refusal(lambda: estimate(model, base, seq_len=4))
    assert message.startswith("cp:")


@pytest.mark.parametrize("axis", [8, "2048", None])
def test_a_single_value_or_a_string_is_not_an_axis(axis: object) -> None:
    message = _refusal(lambda: sweep(MODEL, seq_len=axis))
    assert re.match(r"seq_len: a sweep axis takes a list of values", message)


def test_an_unknown_axis_is_refused_by_name() -> None:
    assert _refusal(lambda: sweep(MODEL, batchsize=[1])).startswith("batchsize: not a setting")


# --- the command line: vramfit estimate ... --sweep FIELD=V1,V2,... ---------------------------------------

def _cli(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    from vramfit.cli import main

    code = main(["estimate", MODEL, *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_prints_a_row_per_point_with_the_api_peaks_and_the_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "--mode", "training", "--sweep", "batch_size=1,64", "--sweep", "seq_len=512,8192",
                        "--gpu", "rtx-4090", "--json")
    assert code == 0
    rows = json.loads(out)
    results = sweep(MODEL, Settings(gpu="rtx-4090").replace(mode="training"), batch_size=[1, 64],
                    seq_len=[512, 8192])
    assert [(r["batch_size"], r["seq_len"]) for r in rows] == [(1, 512), (1, 8192), (64, 512), (64, 8192)]
    assert [(r["allocated"], r["reserved"], r["device"]) for r in rows] == \
        [(e.peak.allocated, e.peak.reserved, e.peak.device) for e in results]
    assert [r["fits"] for r in rows] == [vramfit.check(load_model(MODEL), e.settings).fits for e in results]
    assert rows[0]["fits"] and not rows[-1]["fits"]   # the grid spans the card: both answers are exercised


def test_the_cli_reads_text_values_and_labels_units(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "--sweep", "attention=eager,sdpa", "--seq-len", "4096", "--units", "GB", "--csv")
    assert code == 0
    header, eager, sdpa = out.strip().splitlines()
    assert header == "attention,allocated (GB),reserved (GB),device (GB)"
    assert eager.startswith("eager,") and sdpa.startswith("sdpa,")
    assert float(eager.split(",")[1]) > float(sdpa.split(",")[1])   # eager keeps the scores


@pytest.mark.parametrize(("flags", "message"), [
    (["--sweep", "batch_size"], "--sweep: cannot read 'batch_size'; write FIELD=V1,V2,..."),
    (["--sweep", "batch_size=1", "--sweep", "batch_size=2"], "--sweep: batch_size is given twice"),
    (["--sweep", "batch_size=1,x"], "batch_size: got 'x'; pass a whole number"),
    (["--sweep", "bs=1,2"], "bs: not a setting"),
    (["--sweep", "batch_size=1", "--explain"], "--sweep: prints one row per point, so it takes no --explain"),
])
def test_a_bad_sweep_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str], flags: list[str],
                                                  message: str) -> None:
    code, out, err = _cli(capsys, *flags)
    assert code == 2 and out == ""
    assert err.startswith(f"vramfit: error: {message}")
    assert "Traceback" not in err
