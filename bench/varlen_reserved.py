"""The caching allocator's reserved pool over LoRA steps of varying length: LLaMA-Factory #4772, GLM-4-9B (issue 4, J).

    python bench/varlen_reserved.py --layers 40 --schedule fixed uniform increasing --seeds 0 1 2
    python bench/varlen_reserved.py --layers 4 10 20 40 --schedule uniform --seeds 0     # the pool against depth

The rows (hiyouga/LlamaFactory issue #4772, 2024-07-11, nvidia-smi screenshots, A100 80GB, torch 2.2.0): THUDM/glm-4-9b-chat,
LoRA r=8 on all linear layers (`lora_target: all`), bf16, batch 1, gradient accumulation 16, `cutoff_len: 10240` (a maximum;
the custom data set's lengths are not stated). Measured device 66 GB (LoRA) and 72 GB (QLoRA); vramfit estimates a fixed
10240-token step.

What is traced (fake tensors on the CPU, vramfit's tracker, truth/tracker.py), one sample per micro-step of its own length:
- The model: transformers' GlmForCausalLM (model_type "glm", the transformers port of glm-4-9b) built with the catalog's
  THUDM/glm-4-9b-chat shapes (`glm4_config`: the same 9,399,951,360 parameters). Two differences from the remote code
  (modeling_chatglm.py, XuRui314/GLM4v-Finetune@513b75de, a verbatim June 2024 copy) are restated here because they change
  allocations: its loss (`remote_code_loss`, section J.1; at batch 1 its shifted `.contiguous()` is no copy: dropping
  the last row of a (1, T, V) tensor leaves it contiguous, tests/test_varlen_replay.py) and its key/value heads,
  expanded to all 32 query heads and made contiguous before SDPA (`key_layer.expand(...).contiguous()`; transformers 5 would pass enable_gqa instead). Left as
  transformers has it: fused query_key_value (one LoRA pair there, three here: q/k/v), the rotary and RMSNorm transients.
- The stack: LoRA adapters in fp32 (LLaMA-Factory casts trainable parameters to fp32; PEFT's autocast_adapter_dtype does the
  same), non-reentrant checkpointing of every block (the remote code's own `checkpoint(..., use_reentrant=False)`), autocast
  bf16 around the forward and fp32 copies of its bf16 outputs (HF Trainer bf16=True -> accelerate's prepare_model wraps
  forward in autocast and `convert_outputs_to_fp32`; accelerate src/accelerate/accelerator.py, see accelerate issue #3477),
  loss / 16, backward; after 16 samples clip_grad_norm_(1.0) (Trainer's max_grad_norm), AdamW (torch, foreach as on CUDA),
  zero_grad (set_to_none).
- Not traced: the padding mask (a sample padded to a multiple of 8 makes the remote code build a T x T mask; the lengths
  here are multiples of 8, unpadded), data loading, the CUDA context, cuBLAS/cuDNN workspaces, QLoRA (bitsandbytes 4-bit
  kernels cannot run on fake tensors).
The allocation/free sequence of the whole run is replayed through truth/allocator.py (the rules of
c10/cuda/CUDACachingAllocator.cpp, the same in torch 2.2), capped at the A100 80GB's usable memory minus the context.

Results, GiB, 40 layers, the remote code's loss, replay without a cap (07:06-07:55 UTC; `--micro-steps 32`, then 96):

    lengths                          micro-steps  allocated peak  reserved peak  pool - allocated
    fixed 10240                               32           38.53          43.76             +5.23
    decreasing 10240 -> 512                   32           38.26          43.76             +5.50
    uniform [512, 10240], seed 0..4           32     36.88-38.43    49.28-80.41     +10.85-+43.53
    uniform seed 1 / seed 2                   96     38.50 / 38.51  78.85 / 72.12    +40.35 / +33.60
    increasing 512 -> 10240                   32           38.53         309.87           +271.34

The pool grows only when a sample is longer than every earlier one (a record), by three fp32 T x V segments (the
saved log-softmax, nll_loss's gradient and log_softmax_backward's output coexist; every cached block is from a shorter
sample), plus the bf16 T x V one when T is over twice the previous record: 12VT (+ 2VT) bytes, 17.3 GiB at T = 10240.
In all 15 records of seeds 0-4 this rule matches the replayed increment to 0.045 GiB, even for a record 32 tokens above
the last; no other micro-step adds more than 1 GiB (an optimizer step adds about 0.2). Under the A100's cap (79.58 GiB
less the 0.42 GiB context) seeds 0 and 4 fill the card at their 11th sample and cudaMalloc's failure releases 34 / 39
cached segments; the pool then moves between 39.6 and 74.8 GiB (seed 4). Measured 61.47 GiB device = 61.05 GiB pool: reached by seed 1 from its 20th sample to its 83rd.
Depth does not change the growth (uniform seed 0, pool - allocated: +42.45 / +42.11 / +42.11 GiB at 10 / 20 / 40
layers; fixed: +4.87 / +5.17 / +5.23), and at batch 1 transformers' ForCausalLMLoss (`--loss transformers`) gives the
remote code's figures (fixed 38.53 / 43.76; uniform seed 0: 38.00 / 80.12 against 38.00 / 80.11).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import published_row

MiB = 1 << 20
GiB = 1 << 30
ACCUM = 16                       # gradient_accumulation_steps in the YAML
CUTOFF = 10240                   # cutoff_len in the YAML
SHORTEST = 512                   # the shortest sample drawn (an assumption: the data set is not published)
ROW = "issue-llamafactory4772-glm4-9b-lora"
# The catalog's chatglm config.json names -> GlmConfig's (transformers models/glm/configuration_glm.py).
GLM_FIELDS = {"padded_vocab_size": "vocab_size", "hidden_size": "hidden_size", "ffn_hidden_size": "intermediate_size",
              "num_layers": "num_hidden_layers", "num_attention_heads": "num_attention_heads",
              "multi_query_group_num": "num_key_value_heads", "kv_channels": "head_dim",
              "add_qkv_bias": "attention_bias", "layernorm_epsilon": "rms_norm_eps",
              "tie_word_embeddings": "tie_word_embeddings", "seq_length": "max_position_embeddings"}


def glm4_config(chatglm: dict[str, Any], layers: int | None = None) -> Any:
    """GlmConfig with a chatglm config.json's shapes. Rotary on half of each head (the remote code's
    RotaryEmbedding(kv_channels // 2)), base 10000 * rope_ratio (its `impl`); neither changes memory."""
    import transformers

    fields = {glm: chatglm[name] for name, glm in GLM_FIELDS.items()}
    if layers is not None:
        fields["num_hidden_layers"] = layers
    rope = {"rope_type": "default", "rope_theta": 10000.0 * chatglm.get("rope_ratio", 1),
            "partial_rotary_factor": 0.5}
    config = transformers.GlmConfig(**fields, rope_parameters=rope, attention_dropout=0.0, use_cache=False,
                                    pad_token_id=chatglm.get("pad_token_id"))
    config._attn_implementation = "sdpa"
    return config


def row_settings() -> Any:
    """The published row's settings (LoRA r=8 all-linear, alpha 16, dropout 0, full non-reentrant checkpointing)."""
    from vramfit.settings import settings_from_dict

    row = published_row(ROW)
    return settings_from_dict(row["settings"]), int(row["truth"]["device"])


def build(config: Any, settings: Any, *, fake: bool = True) -> Any:
    """GlmForCausalLM in bf16, checkpointed, with PEFT's LoRA (adapters in fp32), as vramfit's tracer builds it."""
    import torch
    import transformers

    from vramfit.truth.trace import prepare_training

    module = transformers.GlmForCausalLM._from_config(config, dtype=torch.bfloat16)
    return prepare_training(module, settings, fake=fake)


def remote_code_loss(torch: Any, lm_logits: Any, labels: Any) -> tuple[Any, Any]:
    """The loss lines of modeling_chatglm.py ChatGLMForConditionalGeneration.forward (section J.1), restated: fp32
    logits, a shifted contiguous fp32 copy, CrossEntropyLoss, then logits and loss cast back to the model dtype."""
    dtype = lm_logits.dtype
    lm_logits = lm_logits.to(torch.float32)
    shift_logits = lm_logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    loss = torch.nn.functional.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                                             ignore_index=-100)
    return loss.to(dtype), lm_logits.to(dtype)    # shift_logits is still alive at the cast back, as there


def micro_step(torch: Any, module: Any, length: int, loss_kind: str) -> None:
    """One sample through HF Trainer's training_step as accelerate runs it under bf16 (see the module docstring)."""
    ids = torch.zeros(1, length, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if loss_kind == "remote":
            loss, logits = remote_code_loss(torch, module(input_ids=ids, use_cache=False).logits, ids)
        else:   # transformers' ForCausalLMLoss (a comparison, not the row)
            out = module(input_ids=ids, labels=ids, use_cache=False)
            loss, logits = out.loss, out.logits
            del out
    loss, logits = loss.float(), logits.float()     # accelerate's convert_outputs_to_fp32
    del logits                                      # compute_loss keeps only the loss
    (loss / ACCUM).backward()
    del loss, ids


def optimizer_step(torch: Any, module: Any, optimizer: Any) -> None:
    torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def remote_code_kv_heads() -> Iterator[None]:
    """Key and value expanded to every query head, contiguous, before SDPA, as the remote code does (module
    docstring): transformers' sdpa_attention_forward does the same (repeat_kv) when use_gqa_in_sdpa is False."""
    from transformers.integrations import sdpa_attention

    original = sdpa_attention.use_gqa_in_sdpa
    sdpa_attention.use_gqa_in_sdpa = lambda *args, **kwargs: False
    try:
        yield
    finally:
        sdpa_attention.use_gqa_in_sdpa = original


def trace_run(config: Any, settings: Any, lengths: list[int], *, loss_kind: str = "remote",
              fake: bool = True) -> tuple[Any, list[int]]:
    """Trace len(lengths) micro-steps (an optimizer step after every ACCUM of them) under one tracker; returns the
    tracker and the tracker clock at the end of each micro-step."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vramfit.truth.trace import _fused_dropout, _unpadded_inputs
    from vramfit.truth.tracker import LiveTensorTracker

    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    ends: list[int] = []
    with mode, _fused_dropout(), _unpadded_inputs(), remote_code_kv_heads():
        module = build(config, settings, fake=fake)
        with LiveTensorTracker() as tracker:
            tracker.mark(module.parameters(), "parameters")
            tracker.mark(module.buffers(), "buffers")
            optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, foreach=True)
            for index, length in enumerate(lengths, start=1):
                micro_step(torch, module, length, loss_kind)
                if index % ACCUM == 0:
                    optimizer_step(torch, module, optimizer)
                ends.append(tracker._clock)
    return tracker, ends


def schedule(name: str, count: int, seed: int) -> list[int]:
    """Sample lengths, multiples of 8 up to the cutoff: fixed (all 10240), uniform in [512, 10240] (seeded),
    increasing / decreasing (evenly spaced from 512 to 10240)."""
    if name == "fixed":
        return [CUTOFF] * count
    if name == "uniform":
        rng = random.Random(seed)
        return [8 * rng.randint(SHORTEST // 8, CUTOFF // 8) for _ in range(count)]
    ramp = [8 * round((SHORTEST + (CUTOFF - SHORTEST) * i / max(1, count - 1)) / 8) for i in range(count)]
    return ramp if name == "increasing" else ramp[::-1]


def replay_run(tracker: Any, capacity_bytes: int | None) -> Any:
    from vramfit.truth.allocator import replay, tracker_events

    return replay(tracker_events(tracker), capacity_bytes=capacity_bytes)


def replay_steps(tracker: Any, ends: list[int], capacity_bytes: int | None) -> tuple[Any, list[dict[str, int]]]:
    """Replay the run. After each micro-step: the running peaks (allocated: live blocks; reserved: segments),
    segments released so far (cudaMalloc failures under the cap), and the reserved pool's lowest and highest value
    during that micro-step (what nvidia-smi, which reads the pool of the moment, could show then)."""
    from vramfit.truth.allocator import CachingAllocator, tracker_timeline

    allocator = CachingAllocator(capacity_bytes)
    marks: list[dict[str, int]] = []
    boundaries = iter(ends)
    boundary = next(boundaries, None)
    low = high = 0
    for tick, event in tracker_timeline(tracker):
        while boundary is not None and tick > boundary:
            marks.append(_mark(allocator, low, high))
            low = high = allocator.reserved_bytes
            boundary = next(boundaries, None)
        if event.allocate:
            allocator.malloc(event.key, event.nbytes)
        else:
            allocator.free(event.key)
        low, high = min(low, allocator.reserved_bytes), max(high, allocator.reserved_bytes)
    marks.extend(_mark(allocator, low, high) for _ in range(len(ends) - len(marks)))
    return allocator, marks


def _mark(allocator: Any, low: int, high: int) -> dict[str, int]:
    return {"requested": allocator.peak_requested_bytes, "allocated": allocator.peak_allocated_bytes,
            "reserved": allocator.peak_reserved_bytes, "released": allocator.released_segments,
            "reserved_low": low, "reserved_high": high}


def run(chatglm: dict[str, Any], settings: Any, layers: int, lengths: list[int], loss_kind: str,
        capacity_bytes: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    tracker, ends = trace_run(glm4_config(chatglm, layers), settings, lengths, loss_kind=loss_kind)
    seconds = time.perf_counter() - start
    free_allocator, free_marks = replay_steps(tracker, ends, None)
    capped_allocator, capped_marks = replay_steps(tracker, ends, capacity_bytes)
    return {"layers": layers, "loss": loss_kind, "lengths": lengths, "trace_seconds": round(seconds, 1),
            "tracker_peak": tracker.peak_bytes, "steps": free_marks, "steps_capped": capped_marks,
            "segments": free_allocator.segments, "segments_capped": capped_allocator.segments}


def summary(result: dict[str, Any], pool_measured: int) -> str:
    """One line: the uncapped peaks (and the pool after the first optimizer step), the micro-step whose pool first
    reaches the measured one (device - context), and under the A100's cap the segments released and the range of the
    pool over the micro-steps from the first release on."""
    steps, capped, lengths = result["steps"], result["steps_capped"], result["lengths"]
    last, first = steps[-1], steps[min(ACCUM, len(steps)) - 1]
    reach = next((i for i, m in enumerate(steps, 1) if m["reserved"] >= pool_measured), None)
    released = [m for m in capped if m["released"]]
    band = (f"pool {min(m['reserved_low'] for m in released) / GiB:5.2f}-{max(m['reserved_high'] for m in released) / GiB:5.2f}"
            f" from micro-step {capped.index(released[0]) + 1}" if released else "no release")
    return (f"{result['schedule']:10s} seed {result['seed']}  layers {result['layers']:2d}  loss {result['loss']:12s} "
            f"micro-steps {len(lengths):3d} (lengths {min(lengths)}-{max(lengths)}, mean {sum(lengths) / len(lengths):.0f})  "
            f"allocated {last['allocated'] / GiB:6.2f}  reserved {last['reserved'] / GiB:6.2f} "
            f"(+{(last['reserved'] - last['allocated']) / GiB:5.2f}; after {min(ACCUM, len(steps))}: "
            f"+{(first['reserved'] - first['allocated']) / GiB:5.2f})  reaches measured at micro-step {reach}  "
            f"capped: released {capped[-1]['released']}, {band}  [{result['trace_seconds']} s]")


def main() -> None:
    import vramfit
    from vramfit.gpus import lookup

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="*", default=[40], help="decoder layers (glm-4-9b-chat: 40)")
    parser.add_argument("--schedule", nargs="*", default=["fixed", "uniform", "increasing"],
                        choices=("fixed", "uniform", "increasing", "decreasing"), help="sample lengths, tokens")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="seeds of the uniform schedule")
    parser.add_argument("--micro-steps", type=int, default=2 * ACCUM, help="samples (an optimizer step every 16)")
    parser.add_argument("--loss", choices=("remote", "transformers"), default="remote",
                        help="remote: modeling_chatglm.py's own loss (the row); transformers: ForCausalLMLoss")
    parser.add_argument("--json", help="write every run's figures (per micro-step running peaks) here")
    args = parser.parse_args()
    chatglm = vramfit.load_model("THUDM/glm-4-9b-chat").config
    settings, device = row_settings()
    estimate = vramfit.estimate("THUDM/glm-4-9b-chat", settings)
    context = next(c.bytes for c in estimate.memory.components if c.name == "cuda_context")
    capacity = lookup("a100-80gb").usable_bytes - context     # cudaMalloc fails past this: rule 7 of the replay
    results = []
    for layers in args.layers:
        for name in args.schedule:
            for seed in (args.seeds if name == "uniform" else [0]):
                result = run(chatglm, settings, layers, schedule(name, args.micro_steps, seed), args.loss, capacity)
                result.update(schedule=name, seed=seed)
                results.append(result)
                print(summary(result, device - context), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"measured_device": device, "context": context, "capacity": capacity, "runs": results}, out)


if __name__ == "__main__":
    main()
