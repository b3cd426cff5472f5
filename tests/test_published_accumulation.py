"""The converter carries the gradient accumulation (and, for litgpt hub rows, the devices) each source implies.

Sources, read at their commits:
- lit-gpt 8641822 `finetune/lora.py`: `batch_size = 128`, `gradient_accumulation_iters = batch_size //
  micro_batch_size` (not divided by `devices`); the rows' notes say "minibatch 128 via grad accumulation".
- litgpt `config_hub/finetune/<dir>/<method>.yaml` at the commit that added each README table row, and
  `litgpt/args.py` there: `(global_batch_size // devices) // micro_batch_size`, asserted > 0.
Under FSDP, litgpt runs the accumulating micro-steps in `fabric.no_backward_sync` (unsharded gradients), so
the accumulation decides whether the published multi-GPU rows fit.
"""

from __future__ import annotations

from typing import Any

import pytest

from vramfit.settings import settings_from_dict
from vramfit.truth.published import convert_row, devices_of, grad_accum_of

HUB = {"repo": "Lightning-AI/litgpt", "path": "config_hub/finetune/README.md"}
TABLES = {"repo": "Lightning-AI/litgpt", "path": "tutorials/resource-tables.md"}
MULTI_GPU_NOTES = ("finetune_lora (lit-gpt 8641822): bf16-true, LoRA r=8 alpha=16 on query,value only, "
                   "minibatch 128 via grad accumulation, multi-GPU uses FSDP with per-Block activation checkpointing")


def _src(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "x", "source": TABLES, "model": "meta-llama/Llama-2-7b-hf", "method": "lora",
        "dtype_quant": "bf16-true", "optimizer": "torch AdamW", "batch_per_device": 1, "grad_accum": None,
        "seq_len": 1304, "grad_ckpt": True, "flash_attn": "PyTorch SDPA", "lora_rank": 8,
        "lora_targets": "query,value", "gpus": {"count": 2, "type": "A100-SXM4 40GB"},
        "parallelism": "FSDP FULL_SHARD x2", "framework": "lit-gpt", "notes": MULTI_GPU_NOTES,
        "what_measured": "torch.cuda.max_memory_allocated()/1e9 (decimal GB)", "measured_gb": 22.18}
    row.update(changes)
    return row


@pytest.mark.parametrize(("micro_batch", "steps"), [(1, 128), (2, 64), (4, 32)])
def test_lit_gpt_minibatch_text_gives_128_over_the_micro_batch_on_every_rank(micro_batch: int, steps: int) -> None:
    assert grad_accum_of(_src(batch_per_device=micro_batch)) == steps
    assert grad_accum_of(_src(batch_per_device=micro_batch, gpus={"count": 4, "type": "A100"})) == steps


def test_a_stated_accumulation_wins_and_nothing_stated_means_one() -> None:
    assert grad_accum_of(_src(grad_accum=16)) == 16
    assert grad_accum_of(_src(notes="single runs")) == 1
    assert grad_accum_of(_src(source={"repo": "huggingface/peft", "path": "docs/x.md"}, notes=None)) == 1


@pytest.mark.parametrize(("model", "method", "micro", "steps", "devices"), [
    ("google/gemma-2b", "full_ft", 1, 16 // 4 // 1, 4),               # gemma-2b/full.yaml at 5895df10
    ("meta-llama/Llama-2-7b-hf", "full_ft", 4, 64 // 4 // 4, 4),      # llama-2-7b/full.yaml
    ("meta-llama/Meta-Llama-3-8B", "full_ft", 4, 64 // 4 // 4, 4),    # llama-3-8b/full.yaml
    ("microsoft/phi-2", "full_ft", 4, 8 // 2 // 4, 2),                # phi-2/full.yaml: devices 2
    ("google/gemma-2b", "lora", 2, 6 // 1 // 2, 1),
    ("meta-llama/Llama-3.1-8B", "qlora", 2, 8 // 1 // 2, 1),          # llama-3.1-8b/qlora.yaml at fd71063c
])
def test_litgpt_hub_rows_take_their_configs_accumulation_and_devices(
        model: str, method: str, micro: int, steps: int, devices: int) -> None:
    src = _src(source=HUB, model=model, method=method, batch_per_device=micro, notes="Alpaca2k",
               gpus={"count": 4, "type": "A10G 24GB"}, seq_len=512)
    assert (grad_accum_of(src), devices_of(src)) == (steps, devices)


def test_a_hub_model_without_a_config_keeps_the_tables_gpu_count() -> None:
    src = _src(source=HUB, model="unknown/model", method="full_ft", gpus={"count": 4, "type": "A10G 24GB"},
               notes="Alpaca2k")
    assert (grad_accum_of(src), devices_of(src)) == (1, 4)


def test_converted_row_carries_accumulation_gpus_and_the_config_it_came_from() -> None:
    src = _src(source=HUB, model="microsoft/phi-2", method="full_ft", batch_per_device=4, seq_len=512,
               gpus={"count": 4, "type": "A10G 24GB"}, parallelism="FSDP FULL_SHARD x4", notes="Alpaca2k")
    row = convert_row(src)
    settings = settings_from_dict(row.settings)
    assert (settings.workload.grad_accum, settings.parallelism.gpus) == (1, 2)
    assert settings.parallelism.fsdp == "full"
    assert row.source["config"] == ("config_hub/finetune/phi-2/full.yaml at 5895df10: devices 2, "
                                    "global_batch_size 8, micro_batch_size 4")


def test_multi_gpu_row_converts_with_accumulation_and_its_own_gpu_count() -> None:
    settings = settings_from_dict(convert_row(_src(batch_per_device=2)).settings)
    assert (settings.workload.grad_accum, settings.parallelism.gpus) == (64, 2)
    assert "config" not in convert_row(_src()).source
