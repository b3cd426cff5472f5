"""Published training measurements scored by `vramfit.truth.validate`, the rows vramfit explains.

Source: /work/shared/truth/published-measurements.jsonl, converted by vramfit.truth.published. Rows that
measured torch.cuda.max_memory_allocated for a single-GPU LoRA step of a Llama-style model (litgpt's resource
tables and config hub: Llama-2-7B/13B, Llama-3-8B, Mistral-7B), run with the litgpt framework profile, must
stay within 8% (they sit between -7.2% and -2.6%: litgpt's default lora_dropout=0.05 is not in the rows, and
would add its dropout outputs and masks). The rows off by more than 15% are explained in the training
engineer's report (device-level readings with the allocator's reserve, peaks outside the step in litgpt's FSDP
runs, litgpt's own Gemma and Phi); they are scored, not pinned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramfit.truth.published import convert_row
from vramfit.truth.validate import Scored, score_row

SOURCE = Path("/work/shared/truth/published-measurements.jsonl")
WITHIN_8_PERCENT = ("litgpt-rt-lora-llama-2-7b-hf-bf16-mb1", "litgpt-rt-lora-llama-2-7b-hf-bf16-mb2",
                    "litgpt-rt-lora-llama-2-13b-hf-bf16-mb1", "litgpt-hub-llama-2-7b-hf-lora-1xa10g",
                    "litgpt-hub-meta-llama-3-8b-lora-1xa10g", "litgpt-hub-mistral-7b-v0.1-lora-1xa10g")
OOM_CAUGHT = ("litgpt-rt-lora-llama-2-13b-hf-bf16-mb2", "litgpt-finetune-lora-llama2-7b-bf16mixed")


def _scored(row_id: str) -> Scored:
    if not SOURCE.is_file():
        pytest.skip(f"{SOURCE} is not on this machine")
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        source = json.loads(line)
        if source["id"] == row_id:
            result = score_row(convert_row(source), _catalog_loader())
            assert isinstance(result, Scored), result
            return result
    raise AssertionError(f"{row_id} not in {SOURCE}")


def _catalog_loader():  # type: ignore[no-untyped-def]
    from vramfit.model.sources import load_model

    return load_model


@pytest.mark.parametrize("row_id", WITHIN_8_PERCENT)
def test_single_gpu_lora_rows_within_8_percent(row_id: str) -> None:
    scored = _scored(row_id)
    assert scored.error is not None
    assert abs(scored.error) <= 0.08, f"{row_id}: {scored.error:+.1%}"


@pytest.mark.parametrize("row_id", OOM_CAUGHT)
def test_out_of_memory_rows_are_predicted_to_exceed_the_gpu(row_id: str) -> None:
    assert _scored(row_id).oom_caught is True
