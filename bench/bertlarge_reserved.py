"""The caching allocator's reserved pool for the transformers docs' BERT-large training rows (issue 4, section E).

    python bench/bertlarge_reserved.py                 # every traceable hf-bertlarge row, 3 optimizer steps
    python bench/bertlarge_reserved.py --steps 2 --rows hf-bertlarge-bs4-fp32

The rows (docs/source/en/perf_train_gpu_one.mdx @ 0016acf7, transformers): BertForSequenceClassification
(2 labels) from bert-large-uncased, 512 x 512-token dummy samples, HF Trainer, pynvml device `used` read after
trainer.train(): CUDA context + the allocator's reserved pool. Here the step runs on fake tensors (vramfit's
tracer, truth/tracker.py) as the 2022 Trainer ran it: forward (eager attention, dropout on), loss / grad_accum,
backward, clip_grad_norm_(1.0) (Trainer's default max_grad_norm), optimizer.step(), model.zero_grad() (torch <
2.0: set_to_none=False, so the gradients stay allocated); AdamW as transformers' adamw_hf (one parameter at a
time: torch's AdamW with foreach=False), Adafactor as transformers.optimization.Adafactor (Trainer's
optim="adafactor"). The traced allocation sequence is replayed through truth/allocator.py.
Not traced: bitsandbytes Adam8bit (no fake kernels); GradScaler (fp16's loss scaling: a few scalars).

Results, GiB (`--steps 3`, 06:13 UTC; the peaks stop moving after step 2: `--steps 2` and `--steps 4` agree).
The left column is measured - (1343 MiB context + replayed reserved); the last two add `--softmax-saves-input`
(torch <= 1.10, `--steps 2`, 06:24 UTC):

    row                        measured  traced peak  replayed reserved  left    | torch<=1.10: reserved  left
    bs4-fp32                     14.599       11.526             11.660  +1.627  |               13.133  +0.154
    bs1-ga4                       8.478        6.639              6.646  +0.520  |                7.025  +0.141
    bs1-ga4-gc                    6.616        5.227              5.258  +0.047  |                5.242  +0.062
    bs4-fp16                     13.612       10.259             10.410  +1.891  |               11.836  +0.465
    bs1-ga4-gc-fp16               7.104        5.635              5.664  +0.129  |                5.660  +0.133
    bs4-adafactor                12.007        9.032              9.191  +1.504  |               10.629  +0.066
    bs1-ga4-gc-fp16-adafactor     4.733        3.141              3.395  +0.027  |                3.391  +0.031

The pool over the allocated peak is 0.007-0.254 GiB (shapes recur every step, so freed blocks are reused). What
the non-checkpointed rows kept beyond today's step is one fp32 batch x heads x 512 x 512 tensor per layer (16 MiB
per sample per layer): the softmax input that torch <= 1.10 saved for backward. The page's nvidia-smi output is dated
Tue Jan 11 2022 (driver 460.91.03), when the current torch release was 1.10.x (1.11 came in March 2022).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
CONTEXT_BYTES = 1343 * MiB      # the same page's "weights loaded" row: 1343 MiB measured after torch.ones(1,1).cuda()
USABLE_BYTES = 16160 * MiB      # V100-SXM2-16GB as nvidia-smi reports it (vramfit.gpus, v100-16gb usable_bytes)
ROWS = {   # id: (batch, grad_accum, gradient checkpointing, fp16 autocast, optimizer)
    "hf-bertlarge-bs4-fp32": (4, 1, False, False, "adamw"),
    "hf-bertlarge-bs1-ga4": (1, 4, False, False, "adamw"),
    "hf-bertlarge-bs1-ga4-gc": (1, 4, True, False, "adamw"),
    "hf-bertlarge-bs4-fp16": (4, 1, False, True, "adamw"),
    "hf-bertlarge-bs1-ga4-gc-fp16": (1, 4, True, True, "adamw"),
    "hf-bertlarge-bs4-adafactor": (4, 1, False, False, "adafactor"),
    "hf-bertlarge-bs1-ga4-gc-fp16-adafactor": (1, 4, True, True, "adafactor"),
}


def measured(row_id: str) -> int:
    path = Path(__file__).resolve().parents[1] / "data/truth/published.jsonl"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["id"] == row_id:
            return int(row["truth"]["device"])
    raise KeyError(row_id)


def build(torch: Any, gc: bool) -> Any:
    import transformers

    from vramfit import load_model

    fields = {k: v for k, v in load_model("google-bert/bert-large-uncased").config.items() if k != "model_type"}
    config = transformers.BertConfig(**{**fields, "num_labels": 2})
    config._attn_implementation = "eager"    # BERT in transformers 2022 had only the eager attention
    module = transformers.BertForSequenceClassification(config)
    module.train()
    if gc:    # 2022: torch.utils.checkpoint, reentrant
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    return module


def optimizer_for(torch: Any, module: Any, name: str) -> Any:
    params = [p for p in module.parameters() if p.requires_grad]
    if name == "adafactor":
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=5e-5, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0, foreach=False)


def attention_2022(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: Any = None,
                   dropout: float = 0.0, **kwargs: Any) -> Any:
    """BertSelfAttention.forward as transformers ~4.16 (early 2022) ran it: scores / sqrt(head_dim) plus the
    extended attention mask, which BertModel always made ((1 - mask) * -10000, cast to the parameters' dtype:
    fp32 under AMP, so fp16 scores are promoted to fp32 before softmax and dropout), softmax, dropout, matmul.
    Transformers 5 skips an all-ones mask, which would leave fp16 scores under AMP."""
    import torch

    scores = torch.matmul(query, key.transpose(-1, -2)) / query.size(-1) ** 0.5
    mask = torch.zeros(query.size(0), 1, 1, key.size(-2), dtype=torch.float32)   # ones mask -> zeros added
    softmax = _softmax_keeping_input if SOFTMAX_SAVES_INPUT[0] else (lambda x: torch.softmax(x, dim=-1))
    probs = torch.nn.functional.dropout(softmax(scores + mask), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


SOFTMAX_SAVES_INPUT = [False]


def _softmax_keeping_input(x: Any) -> Any:
    """softmax whose autograd node keeps its input as well as its output, as torch <= 1.10 did: the
    derivative `_softmax_backward_data(grad, result, dim, self)` referenced `self`, so autograd saved it
    (pytorch/pytorch issue #64000, "Softmax/logsoftmax use more memory for backward than needed", 2021-08-26;
    PR #65242 "Avoid saving self for softmax and log_softmax", 2021-09-17, after which the backward takes only
    the input's dtype)."""
    import torch

    class Softmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, input: Any) -> Any:
            output = torch.softmax(input, dim=-1)
            ctx.save_for_backward(input, output)
            return output

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            input, output = ctx.saved_tensors
            return torch._softmax_backward_data(grad, output, -1, input.dtype)

    return Softmax.apply(x)


class CudaAutocastFp32:
    """CUDA autocast runs layer_norm and softmax in fp32 (aten/src/ATen/autocast_mode.cpp: layer_norm in the
    fp32 list, softmax in fp32_set_opt_dtype); the CPU autocast lists the trace runs under do not. Entered inside
    autocast, this casts their fp16 inputs (and layer_norm's weight and bias) to fp32 as CUDA would."""

    def __init__(self) -> None:
        import torch
        from torch.overrides import TorchFunctionMode

        fp32 = {torch.nn.functional.layer_norm, torch.nn.functional.softmax, torch.softmax, torch.Tensor.softmax}

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                if func in fp32:
                    args = tuple(a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.float16 else a
                                 for a in args)
                    with torch.autocast("cpu", enabled=False):
                        return func(*args, **(kwargs or {}))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def __enter__(self) -> None:
        self.mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)


def trainer_run(torch: Any, module: Any, row: tuple[int, int, bool, bool, str], steps: int, tracker: Any) -> None:
    batch, accum, _, fp16, name = row
    optimizer = optimizer_for(torch, module, name)
    autocast = _fp16_autocast(torch) if fp16 else _null
    for _ in range(steps):
        for _ in range(accum):
            ids = torch.randint(0, 30522, (batch, 512))
            labels = torch.randint(0, 2, (batch,))
            with autocast():
                loss = module(input_ids=ids, labels=labels).loss / accum
            loss.backward()
            del loss, ids, labels
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0, foreach=False)
        optimizer.step()
        module.zero_grad(set_to_none=False)


def _fp16_autocast(torch: Any) -> Any:
    import contextlib

    @contextlib.contextmanager
    def both() -> Any:
        with torch.autocast("cpu", dtype=torch.float16), CudaAutocastFp32():
            yield

    return both


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run(row_id: str, steps: int, dropout_mask: str = "bool") -> dict[str, Any]:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vramfit.truth.allocator import replay, tracker_events
    from vramfit.truth.tracker import LiveTensorTracker

    row = ROWS[row_id]
    import transformers.models.bert.modeling_bert as bert

    from vramfit.truth.trace import (
        _fused_dropout,  # dropout as CUDA runs it (bool mask), not the CPU fallback
    )

    bert.eager_attention_forward = attention_2022    # looked up by name at each call (modeling_bert.py)
    fused = _fused_dropout() if dropout_mask == "bool" else contextlib.nullcontext()
    with FakeTensorMode(allow_non_fake_inputs=True), fused:
        module = build(torch, row[2])
        with LiveTensorTracker() as tracker:
            tracker.mark(module.parameters(), "parameters")
            tracker.mark(module.buffers(), "buffers")
            trainer_run(torch, module, row, steps, tracker)
    events = tracker_events(tracker)
    free = replay(events)
    capped = replay(events, capacity_bytes=USABLE_BYTES - CONTEXT_BYTES)
    device = measured(row_id)
    return {"row": row_id, "steps": steps, "tracker_peak": tracker.peak_bytes,
            "replay_requested": free.peak_requested_bytes,
            "replay_allocated": free.peak_allocated_bytes, "reserved": free.peak_reserved_bytes,
            "reserved_capped": capped.peak_reserved_bytes, "released": capped.released_segments,
            "measured": device, "left": device - CONTEXT_BYTES - capped.peak_reserved_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps to trace (the pool stops growing by 3)")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="row ids (default: all traceable)")
    parser.add_argument("--dropout-mask", choices=("bool", "input-dtype"), default="bool",
                        help="bool: CUDA's fused dropout (1-byte mask, torch >= 1.x on CUDA); input-dtype: the "
                             "CPU fallback, whose saved noise has the input's dtype (a sensitivity check)")
    parser.add_argument("--softmax-saves-input", action="store_true",
                        help="attention softmax keeps its input for backward, as torch <= 1.10 did (issue #64000)")
    args = parser.parse_args()
    SOFTMAX_SAVES_INPUT[0] = args.softmax_saves_input
    for row_id in args.rows:
        r = run(row_id, args.steps, args.dropout_mask)
        print(f"{r['row']:40s} steps {r['steps']}  tracker peak {r['tracker_peak'] / GiB:6.3f}  replay requested "
              f"{r['replay_requested'] / GiB:6.3f} allocated "
              f"{r['replay_allocated'] / GiB:6.3f}  reserved {r['reserved'] / GiB:6.3f}  reserved(16 GB cap) "
              f"{r['reserved_capped'] / GiB:6.3f} (released {r['released']})  context+reserved "
              f"{(CONTEXT_BYTES + r['reserved_capped']) / GiB:6.3f}  measured {r['measured'] / GiB:6.3f}  "
              f"left {r['left'] / GiB:+6.3f} GiB", flush=True)


if __name__ == "__main__":
    main()
