"""Properties every estimate keeps, over generated settings and every catalog model (Hypothesis; strategies in
tests/strategies.py). Memory growing with batch and sequence length, and ZeRO / FSDP / checkpointing /
offload never adding memory, are tests/test_monotonic.py's; here:

- the components add up to the reported peaks, level by level, and are non-negative integers;
- LoRA never needs more memory than full fine-tuning of the same step;
- for any settings (valid or hostile: wrong types, negative, huge, NaN, unknown names) and any model, the only
  exception vramfit raises is its own VramfitError, and estimating the same thing twice gives the same answer.

Each property runs a bounded number of examples (a few seconds each on a shared 2-core machine).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st
from strategies import any_settings, catalog_model, workload_settings

import vramfit
from vramfit.errors import InvalidSetting, UnsupportedArchitecture, VramfitError
from vramfit.model.catalog import catalog_ids
from vramfit.model.loaded import Model
from vramfit.settings import Settings

BOUNDED = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.filter_too_much])


def _model(model_id: str) -> Model:
    try:
        return catalog_model(model_id)
    except UnsupportedArchitecture:
        reject()
        raise  # unreachable: reject() raises


def _estimate(model: Model, base: Settings, **changes: Any) -> vramfit.Estimate:
    try:
        return vramfit.estimate(model, base.replace(**changes))
    except InvalidSetting:
        reject()   # a combination this model cannot run: no property to check
        raise


@BOUNDED
@given(model_id=st.sampled_from(catalog_ids()), base=workload_settings())
def test_components_add_up_to_the_peaks(model_id: str, base: Settings) -> None:
    result = _estimate(_model(model_id), base)
    components = result.memory.components
    assert all(type(c.bytes) is int and c.bytes >= 0 for c in components), components
    assert {c.level for c in components} <= {"allocated", "reserved", "device"}
    by_level = {level: sum(c.bytes for c in components if c.level == level)
                for level in ("allocated", "reserved", "device")}
    assert result.peak.allocated == by_level["allocated"]
    assert result.peak.reserved == by_level["allocated"] + by_level["reserved"]
    assert result.peak.device == result.memory.total == sum(by_level.values())
    phases = result.extra.get("phases")
    if phases:   # training: the reported phase is the largest one
        assert phases[result.extra["peak_phase"]] == max(phases.values()), phases


# "LoRA never needs more than full fine-tuning" holds for the frozen base, not for LoRA's own tensors, which
# full fine-tuning does not have: the adapters, their gradients and states, and the activations they save for
# backward (lora_A's output, batch x tokens x rank, per adapted linear; and under PEFT an fp32 copy of each
# adapted linear's input, peft/tuners/lora/layer.py `_cast_input_dtype`, since get_peft_model upcasts the
# adapters to fp32 by default). When activations dominate and the model is small these outweigh full
# fine-tuning's optimizer states, and the model says so, as the runtime would: opt-125m under torchtune,
# all-linear r64, eager attention, batch 59 x 1,207 tokens: LoRA 115,648,018,944 bytes allocated > full
# 115,647,714,816 (activations +437.6 MB, adapters +21.2 MB, optimizer states -458.5 MB); Yi-1.5-34B under
# PEFT, r64, batch 1 x 14,002 tokens: LoRA +8.9 MB. So the property is checked with LoRA's own tensors
# bounded from above and allowed for.
@BOUNDED
@given(model_id=st.sampled_from(catalog_ids()), base=workload_settings(mode="training"),
       gpus=st.sampled_from((1, 2, 8)))
def test_lora_never_needs_more_than_full_fine_tuning(model_id: str, base: Settings, gpus: int) -> None:
    model = _model(model_id)
    base = base.replace(gpus=gpus, zero_stage=0)
    full = _estimate(model, base, finetune="full").peak
    lora = _estimate(model, base, finetune="lora").peak
    allowance = _lora_own_bytes_bound(model, base)
    for name in ("allocated", "reserved", "device"):
        assert getattr(lora, name) <= getattr(full, name) + allowance, (
            f"{model_id} {base.workload} x{gpus}: LoRA {name} {getattr(lora, name):,} > full "
            f"{getattr(full, name):,} + LoRA's own {allowance:,}")


def _lora_own_bytes_bound(model: Model, base: Settings) -> int:
    """An upper bound of what LoRA adds that full fine-tuning lacks, for every linear adapted: its input
    copied to fp32 and its rank-r output saved (4 bytes each, per token), and the adapters themselves with
    fp32 gradient and two fp32 Adam states (16 bytes per adapter parameter)."""
    tokens = base.workload.batch_size * base.workload.seq_len
    rank = base.training.lora.rank
    own = 0
    for layer in model.architecture.layers():
        linears = layer.attention.linears() + (() if hasattr(layer.mlp, "experts") else layer.mlp.linears())
        for linear in linears:
            own += tokens * (linear.in_features + rank) * 4
            own += rank * (linear.in_features + linear.out_features) * 16
    return own


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_id=st.sampled_from(catalog_ids()), chosen=any_settings())
def test_any_settings_raise_only_vramfit_errors(model_id: str, chosen: Settings) -> None:
    try:
        model = catalog_model(model_id)
    except VramfitError:
        return
    try:
        first = vramfit.estimate(model, chosen)
    except VramfitError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)   # one line, as the CLI prints it
        assert ":" in message.split(" ")[0] or ":" in message, message  # it starts by naming what is wrong
        return
    assert first == vramfit.estimate(model, chosen), "the same question got two answers"
    assert first.peak.device > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chosen=any_settings(), data=st.data())
def test_searches_raise_only_vramfit_errors(chosen: Settings, data: st.DataObject) -> None:
    """The searches run many estimates; whatever they are given, they fail only with vramfit's error."""
    from vramfit import search

    model = catalog_model(data.draw(st.sampled_from(("Qwen/Qwen3-0.6B", "Qwen/Qwen3-30B-A3B"))))
    assume(chosen.gpu is not None or chosen.gpu_memory is not None)
    try:
        search.check(model, chosen)
        search.max_batch(model, chosen, limit=64)
    except VramfitError:
        pass


@pytest.mark.parametrize("value", [10**3, 10**6, 10**9])
def test_kv_cache_is_exact_integer_arithmetic_up_to_a_billion_tokens(value: int) -> None:
    """The KV cache is linear in tokens with no rounding: at 10^9 tokens it is exactly 10^9 times one token's
    (a float on the way would be off by thousands of bytes there)."""
    model = catalog_model("meta-llama/Llama-3.1-8B")

    def kv(tokens: int) -> int:
        components = vramfit.estimate(model, seq_len=tokens, dtype="bf16").memory.components
        return sum(c.bytes for c in components if c.name == "kv_cache")

    assert kv(value) == value * kv(1)
