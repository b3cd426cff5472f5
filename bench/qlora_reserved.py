"""The caching allocator's pool over a 2-GPU QLoRA step with bitsandbytes-like dequantization: PEFT docs Llama-2-70B (issue 4, F).

    python bench/qlora_reserved.py --layers 4 8 16 --dequant on off      # the pool against depth, with and without
    python bench/qlora_reserved.py --layers 80 --dequant on off           # the rows' depth
    python bench/qlora_reserved.py --layers 16 80 --prefetch              # FSDP1 BACKWARD_PRE: two units in backward

Hypothesis tested (docs/PUBLISHED-TRAINING-ROWS.md F, "Left on the three 2-GPU QLoRA rows": 4.38 / 6.19 / 5.36 GiB): the
rows' nvidia-smi readings exceed vramfit's allocated peak + context + NCCL because bitsandbytes dequantizes each 4-bit
weight into a temporary bf16 copy at every forward and backward call, interleaved with activations of other sizes, and
that fragments the caching allocator's pool (reserved >> allocated).

The rows (peft docs/source/accelerate/fsdp.md and deepspeed.md QLoRA sections at 6008f272a; examples/sft/run_peft_qlora_fsdp.sh;
data/truth/published.jsonl peftdoc-llama2-70b-qlora-*): meta-llama/Llama-2-70b-hf, NF4 + double quantization with
bnb_4bit_quant_storage bf16, LoRA r=8 alpha 16 dropout 0.1 on all linears, batch 2 x 2048 tokens, gradient accumulation 2,
reentrant gradient checkpointing, flash attention, AdamW, 2 GPUs (FSDP1 FULL_SHARD or ZeRO-3); bitsandbytes 0.43.0 (F6),
peft 0.9.0 (bf16 adapters, F9).

What is traced (fake tensors on the CPU, truth/tracker.py), one process standing for rank 0 of 2:
- The model: transformers' LlamaForCausalLM built from the catalog's Llama-2-70b-hf config.json (hidden 8192, intermediate
  28672, 64 heads, 8 kv heads, vocab 32000), `--layers` decoder layers, bf16, SDPA (stands for flash: neither saves a
  T x T matrix), PEFT LoRA on all linears with the adapters cast to bf16 (peft < 0.12, F9).
- Each LoRA layer's base linear replaced by `Fake4bitLinear`: a uint8 packed weight of out*in/2 bytes and a double-quantized
  absmax (out*in/64 uint8 + out*in/16384 fp32); its autograd.Function `FakeMatMul4Bit` stands for bitsandbytes 0.43.0
  `MatMul4Bit` (bitsandbytes/autograd/_functions.py): forward `F.linear(A, F.dequantize_4bit(B, quant_state).to(A.dtype).t())`
  and `ctx.tensors = (A, B)` (section D), backward `torch.matmul(grad_output, F.dequantize_4bit(B, ctx.state).to(grad_output
  .dtype).t())`. `dequantize_4bit` (bitsandbytes/functional.py, 0.43-era copies read) first dequantizes the nested absmax into an fp32
  tensor (one float per 64-weight block), then allocates the bf16 out x in output; the absmax temporary dies on return.
  `--dequant off` uses one resident bf16 weight per distinct shape instead (no temporaries; its bytes are constant and
  reported in `shared`).
- FSDP1 FULL_SHARD on one process: each decoder unit keeps its shard resident (half its packed weights and norms); before the
  unit runs forward, and again before its recompute in backward, a uint8 buffer of the whole unit's flat parameter is
  allocated (the all-gather output; quant_storage bf16 packs 2 bytes per 4 weights, F5), freed after the forward (first pass,
  no grad) or after the unit's backward (the gradient of its input). The root unit (embed_tokens, lm_head, norm in bf16) is
  gathered into one buffer at the start of each micro-step and freed after backward (FSDP1 does not reshard the root after
  forward); the module's weights are views into that buffer, as use_orig_params makes them. absmax stays whole (F7).
- Each micro-step: autocast bf16 forward with labels (transformers' ForCausalLMLoss), accelerate's fp32 copy of the logits,
  loss / 2, backward; every 2 micro-steps clip_grad_norm_(1.0), AdamW (foreach) over the adapters, zero_grad(set_to_none).
- `--prefetch`: FSDP1's BACKWARD_PRE (accelerate's default `fsdp_backward_prefetch`): when a unit's backward starts
  (its recompute), the previous layer's unit is gathered too. `--streams 2` replays the all-gather outputs in their own
  pool (FSDP1 all-gathers on its unshard stream).
- The gathering hooks sit on each block's input_layernorm (pre) and mlp (post), inside the checkpointed region: transformers
  5 checkpoints `forward` with the module hooks outside, whereas transformers 4.39 (the rows' era) checkpointed
  `decoder_layer.__call__` with FSDP1's wrapper inside, so FSDP1 gathered for both runs of each block.
- Not traced: NCCL buffers, record_stream's delayed reuse and the rate limiter's second all-gather in flight (F3), the
  adapters' gradient reduce-scatter, DeepSpeed's gathering and buckets (the ZeRO-3 row), the CUDA context, cuBLAS
  workspaces, the offload row's pinned-copy pool (F10).
The whole sequence is replayed through truth/allocator.py (the rules of c10/cuda/CUDACachingAllocator.cpp, torch 2.2).

Results, GiB, 6 micro-steps (3 optimizer steps), peaks over the whole run, torch 2.13 CPU / transformers 5.23 / peft 0.21
(08:50-08:58 UTC; `--layers 4 16 80 --micro-steps 6`, then `--layers 32 48 64 --streams 1`):

    layers  dequant  allocated peak  reserved peak  reserved - allocated  (two streams: reserved - allocated)
         4  on                 5.95           6.41                 +0.46  +0.46
         4  off                6.64           6.99                 +0.35  +0.37
        16  on                 9.36           9.79                 +0.43  +0.43
        16  off               10.05          10.50                 +0.45  +0.57
        32  on                13.91          14.54                 +0.63
        32  off               14.60          15.32                 +0.72
        48  on                18.45          19.26                 +0.81
        48  off               19.14          20.12                 +0.98
        64  on                23.00          24.22                 +1.22
        64  off               23.68          24.92                 +1.24
        80  on                27.54          28.94                 +1.40  +1.40
        80  off               28.23          29.74                 +1.51  +1.53

With FSDP1's backward prefetch (`--layers 16 80 --prefetch`, 08:59-09:02 UTC; accelerate's default BACKWARD_PRE: a second
unit gathered while one runs its backward):

    layers  dequant  allocated peak  reserved peak  reserved - allocated  (two streams: reserved - allocated)
        16  on                 9.76          10.45                 +0.69  +0.43
        16  off               10.45          10.83                 +0.38  +0.57
        80  on                27.94          29.60                 +1.66  +1.40
        80  off               28.63          30.08                 +1.45  +1.53

(`off` allocates 1.02 GiB of resident bf16 weights, one per shape, instead of the temporaries.) At 80 layers with
prefetch the traced allocated peak, 27.94 GiB, is the estimate's allocated part for the no-offload row (28.88 GiB less
the 0.42 GiB context and 0.53 GiB NCCL = 27.93 GiB; its gathered_parameters count two units), 27.54 GiB without
prefetch. The pool over allocated is 1.40 GiB with the dequantization temporaries and 1.51 GiB without: the
temporaries do not fragment the pool. Each of their sizes (448 MiB for gate/up/down, 128 MiB for q/o, 16 MiB for k/v)
recurs in every layer and every call, so best fit hands the same cached blocks back; when the pool reached its peak
(80 layers, no prefetch) 15 free 448 MiB blocks were cached for the next dequantizations. The reserve grows with depth
(+0.46 at 4 layers to +1.40 at 80) in both modes; the all-gather outputs on their own stream's pool (`--streams 2`:
the root's 0.98 GiB buffer and one unit's 0.40 GiB) add at most 0.12 GiB, because they too recur at the same sizes.
With prefetch the reserve is 1.40-1.66 GiB with the temporaries and 1.45-1.53 without. After 4 micro-steps every
figure stays put (per micro-step columns of the output). So the replay accounts for about 1.4-1.7 GiB of the 4.28 GiB
left on the no-offload row today (33.16 measured - 28.88 estimated; 4.38 before F11; 33.16 - (27.94 + 1.66 + 0.42 + 0.53) = 2.61 GiB still left), and the
dequantization is not what makes up the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import published_row

GiB = 1 << 30
MODEL = "meta-llama/Llama-2-70b-hf"
ROW = "peftdoc-llama2-70b-qlora-fsdp-nooffload-2gpu"
SHARDS = 2                      # 2 GPUs: FSDP FULL_SHARD keeps half of every flat parameter resident
BLOCK = 64                      # bitsandbytes 4-bit blocksize (Linear4bit default, transformers' BitsAndBytesConfig)
NESTED_BLOCK = 256              # double quantization's blocksize of the absmax (bitsandbytes functional.quantize_4bit)


def packed_bytes(out_features: int, in_features: int) -> int:
    """NF4 packs two 4-bit weights per byte: out*in/2 bytes whatever the quant_storage dtype."""
    return out_features * in_features // 2


def absmax_bytes(out_features: int, in_features: int) -> int:
    """Double quantization: one uint8 absmax per 64-weight block and one fp32 scale per 256 of those."""
    blocks = out_features * in_features // BLOCK
    return blocks + 4 * -(-blocks // NESTED_BLOCK)


class FakeMatMul4Bit:
    """Holder for the autograd.Function, built lazily so that importing this file does not import torch."""

    function: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.function is None:
            cls.function = _make_function()
        return cls.function


def _make_function() -> Any:
    import torch

    class MatMul4Bit(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, A: Any, layer: Any) -> Any:
            weight = layer.dequantize()
            output = torch.nn.functional.linear(A, weight)
            del weight
            ctx.layer = layer
            ctx.tensors = (A if layer.keep_input else None, None)   # bitsandbytes 0.43.0: (A, B); 0.43.2: (None, B)
            return output

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            weight = ctx.layer.dequantize()
            grad_A = torch.matmul(grad_output, weight)
            del weight
            ctx.tensors = None
            return grad_A, None

    return MatMul4Bit


def make_fake_4bit_linear(out_features: int, in_features: int, *, dequant: bool = True, keep_input: bool = True,
                          shared: dict[tuple[int, int], Any] | None = None, device: Any = None) -> Any:
    """A frozen linear stored as NF4 (packed uint8 + absmax) that computes like bitsandbytes' Linear4bit."""
    import torch

    class Fake4bitLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.dequant, self.keep_input, self.shared = dequant, keep_input, shared
            self.register_buffer("weight_packed", torch.empty(packed_bytes(out_features, in_features), 1,
                                                              dtype=torch.uint8, device=device))
            blocks = out_features * in_features // BLOCK
            self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, device=device))
            self.register_buffer("absmax_scale", torch.empty(-(-blocks // NESTED_BLOCK), dtype=torch.float32,
                                                             device=device))

        def dequantize(self) -> Any:
            """bitsandbytes 0.43.0 functional.dequantize_4bit with a nested quant_state: fp32 absmax, then the bf16
            out x in weight; or, with dequant off, the resident bf16 weight of this shape."""
            if not self.dequant:
                return self.shared[(self.out_features, self.in_features)]  # type: ignore[index]
            absmax = torch.empty(self.absmax.numel(), dtype=torch.float32, device=self.absmax.device)
            weight = torch.empty(self.out_features, self.in_features, dtype=torch.bfloat16, device=self.absmax.device)
            del absmax
            return weight

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            return FakeMatMul4Bit.get().apply(x, self)

    return Fake4bitLinear()


# --- the model ------------------------------------------------------------------------------------------------


def llama_config(config: dict[str, Any], layers: int) -> Any:
    import transformers

    fields = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    llama = transformers.LlamaConfig(**{**fields, "num_hidden_layers": layers, "use_cache": False})
    llama._attn_implementation = "sdpa"
    return llama


def row_settings() -> Any:
    from vramfit.settings import settings_from_dict

    return settings_from_dict(published_row(ROW)["settings"])


def build(config: Any, settings: Any, *, dequant: bool) -> tuple[Any, dict[tuple[int, int], Any]]:
    """LlamaForCausalLM in bf16, reentrant checkpointing, PEFT LoRA (bf16 adapters), base linears -> Fake4bitLinear."""
    import torch
    import transformers

    from vramfit.truth.trace import with_lora

    module = transformers.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    module.train()
    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    module.enable_input_require_grads()     # what PEFT / trl do for reentrant checkpointing over frozen embeddings
    module = with_lora(module, settings)
    for name, parameter in module.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.to(torch.bfloat16)   # peft < 0.12 keeps adapters in the base dtype (F9)
    shared: dict[tuple[int, int], Any] = {}
    for layer in lora_layers(module):
        base = layer.base_layer
        shared.setdefault((base.out_features, base.in_features), None)
        layer.base_layer = make_fake_4bit_linear(base.out_features, base.in_features, dequant=dequant, shared=shared,
                                                 device=base.weight.device)
    return module, shared


def lora_layers(module: Any) -> list[Any]:
    return [m for m in module.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")
            and isinstance(getattr(m.base_layer, "in_features", None), int)]


def unit_bytes(layer: Any) -> int:
    """One decoder unit's flat parameter: its packed 4-bit weights and its two bf16 RMSNorm weights (the adapters, a few
    MB, left out)."""
    packed = sum(m.weight_packed.numel() for m in layer.modules() if hasattr(m, "weight_packed"))
    norms = sum(p.numel() * 2 for n, p in layer.named_parameters() if "norm" in n)
    return packed + norms


def root_parts(module: Any) -> list[tuple[Any, str, tuple[int, ...]]]:
    """(owner module, attribute, shape) of the root unit's bf16 weights: embed_tokens, norm, lm_head."""
    model = module.get_base_model()
    parts = [model.model.embed_tokens, model.model.norm, model.lm_head]
    return [(owner, "weight", tuple(owner.weight.shape)) for owner in parts]


# --- FSDP1 on one process -------------------------------------------------------------------------------------


class Gathering:
    """Emulated all-gathers of each decoder unit (hooks) and of the root unit (`root()` around a micro-step)."""

    def __init__(self, module: Any, *, prefetch: bool = False) -> None:
        self.module = module
        self.prefetch = prefetch   # FSDP1 BACKWARD_PRE (accelerate's default): gather the next unit of backward early
        self.layers = list(module.get_base_model().model.layers)
        self.gathered: dict[int, Any] = {}
        self.tracker: Any = None           # set while tracing: records which storages are all-gather outputs
        self.unshard_serials: set[int] = set()
        self.sizes = {id(layer): unit_bytes(layer) for layer in self.layers}
        self.root_parts = root_parts(module)     # the shapes, read once: the weights become placeholders between steps
        for layer in self.layers:   # first and last submodules: inside the checkpointed forward, seen twice
            layer.input_layernorm.register_forward_pre_hook(partial(self._pre_forward, layer), with_kwargs=True)
            layer.mlp.register_forward_hook(partial(self._post_forward, layer))

    def _pre_forward(self, layer: Any, _norm: Any, args: Any, kwargs: Any) -> None:
        import torch

        if id(layer) not in self.gathered:
            self.gathered[id(layer)] = self._unshard(torch.empty(self.sizes[id(layer)], dtype=torch.uint8))
        hidden = args[0] if args else kwargs["hidden_states"]
        if torch.is_grad_enabled() and hidden.requires_grad:      # the recompute in backward: free after backward
            key = id(layer)
            hidden.register_hook(lambda grad: self._release(key))
            index = self.layers.index(layer)
            if self.prefetch and index > 0 and id(self.layers[index - 1]) not in self.gathered:
                previous = self.layers[index - 1]
                self.gathered[id(previous)] = self._unshard(torch.empty(self.sizes[id(previous)], dtype=torch.uint8))

    def _post_forward(self, layer: Any, _mlp: Any, args: Any, output: Any) -> None:
        import torch

        if not torch.is_grad_enabled():    # reentrant checkpointing's first pass: reshard after forward
            self._release(id(layer))

    def _unshard(self, buffer: Any) -> Any:
        if self.tracker is not None:
            self.unshard_serials.update(self.tracker.track(buffer))
        return buffer

    def _release(self, key: int) -> None:
        self.gathered.pop(key, None)

    def resident(self) -> list[Any]:
        """Each unit's shard (half of it) and the root's shard, allocated once."""
        import torch

        shards = [torch.empty(-(-size // SHARDS), dtype=torch.uint8) for size in self.sizes.values()]
        root = sum(_numel(shape) * 2 for _, _, shape in self.root_parts)
        return [*shards, torch.empty(-(-root // SHARDS), dtype=torch.uint8)]

    @contextlib.contextmanager
    def root(self) -> Iterator[None]:
        """The root's flat parameter gathered in bf16, its weights views into it; freed (placeholders) afterwards."""
        import torch

        parts = self.root_parts
        flat = self._unshard(torch.empty(sum(_numel(shape) for _, _, shape in parts), dtype=torch.bfloat16))
        offset = 0
        for owner, name, shape in parts:
            view = flat[offset:offset + _numel(shape)].view(shape)
            setattr(owner, name, torch.nn.Parameter(view, requires_grad=False))
            offset += _numel(shape)
        del flat, view
        try:
            yield
        finally:
            for owner, name, shape in parts:
                setattr(owner, name, torch.nn.Parameter(torch.empty(0, dtype=torch.bfloat16), requires_grad=False))


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


# --- the run --------------------------------------------------------------------------------------------------


def trace_run(config: Any, settings: Any, *, dequant: bool, micro_steps: int,
              prefetch: bool = False) -> tuple[Any, list[int], int, set[int]]:
    """Trace `micro_steps` micro-steps (an optimizer step every grad_accum); returns the tracker, the clock at the end
    of each micro-step, the bytes of the shared bf16 weights (dequant off) and the tracker serials of the all-gather
    outputs (for the two-stream replay)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vramfit.truth.trace import _fused_dropout, _unpadded_inputs
    from vramfit.truth.tracker import LiveTensorTracker

    w = settings.workload
    ends: list[int] = []
    with FakeTensorMode(allow_non_fake_inputs=True), _fused_dropout(), _unpadded_inputs():
        module, shared = build(config, settings, dequant=dequant)
        gathering = Gathering(module, prefetch=prefetch)
        with LiveTensorTracker() as tracker:
            gathering.tracker = tracker
            resident = gathering.resident()
            tracker.mark(resident, "parameters")
            tracker.mark((m.absmax for m in module.modules() if hasattr(m, "absmax_scale")), "parameters")
            tracker.mark((m.absmax_scale for m in module.modules() if hasattr(m, "absmax_scale")), "parameters")
            trainable = [p for p in module.parameters() if p.requires_grad]
            tracker.mark(trainable, "parameters")
            shared_bytes = 0
            if not dequant:
                for shape in shared:
                    shared[shape] = torch.empty(shape, dtype=torch.bfloat16)
                    shared_bytes += _numel(shape) * 2
                tracker.mark(shared.values(), "shared")
            optimizer = torch.optim.AdamW(trainable, lr=2e-4, foreach=True)
            for index in range(1, micro_steps + 1):
                micro_step(torch, module, gathering, w.batch_size, w.seq_len, w.grad_accum)
                if index % w.grad_accum == 0:
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                ends.append(tracker._clock)
    gathering.tracker = None
    return tracker, ends, shared_bytes, gathering.unshard_serials


def micro_step(torch: Any, module: Any, gathering: Gathering, batch: int, seq: int, accum: int) -> None:
    ids = torch.zeros(batch, seq, dtype=torch.long)
    with gathering.root():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(input_ids=ids, labels=ids, use_cache=False)
            loss, logits = out.loss, out.logits
            del out
        loss, logits = loss.float(), logits.float()      # accelerate's convert_outputs_to_fp32
        del logits
        (loss / accum).backward()
        del loss, ids


def replay_marks(tracker: Any, ends: list[int], unshard: set[int] | None = None) -> list[dict[str, int]]:
    """Running peaks after each micro-step (allocated: live blocks; reserved: segments). With `unshard`, those storages
    (the all-gather outputs) go to a second allocator standing for FSDP1's unshard stream: the caching allocator
    reuses a free block only on the stream that allocated it (CUDACachingAllocator.cpp get_free_block: the pools are
    ordered by stream first), so two streams are two pools; the peaks are of their sums."""
    from vramfit.truth.allocator import CachingAllocator, tracker_timeline

    compute, other = CachingAllocator(), CachingAllocator()
    totals = {"allocated": 0, "reserved": 0}
    marks: list[dict[str, int]] = []
    boundaries = iter(ends)
    boundary = next(boundaries, None)
    for tick, event in tracker_timeline(tracker):
        while boundary is not None and tick > boundary:
            marks.append(_mark(totals, compute, other))
            boundary = next(boundaries, None)
        allocator = other if unshard is not None and event.key in unshard else compute
        if event.allocate:
            allocator.malloc(event.key, event.nbytes)
        else:
            allocator.free(event.key)
        totals["allocated"] = max(totals["allocated"], compute.allocated_bytes + other.allocated_bytes)
        totals["reserved"] = max(totals["reserved"], compute.reserved_bytes + other.reserved_bytes)
    marks.extend(_mark(totals, compute, other) for _ in range(len(ends) - len(marks)))
    return marks


def _mark(totals: dict[str, int], compute: Any, other: Any) -> dict[str, int]:
    return {"allocated": totals["allocated"], "reserved": totals["reserved"],
            "segments": compute.segments + other.segments, "unshard_reserved": other.peak_reserved_bytes}


def main() -> None:
    import vramfit

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="*", default=[8], help="decoder layers (Llama-2-70B: 80)")
    parser.add_argument("--dequant", nargs="*", choices=("on", "off"), default=["on", "off"],
                        help="on: a bf16 out x in temporary per 4-bit call (bitsandbytes); off: resident bf16 weights")
    parser.add_argument("--streams", type=int, nargs="*", choices=(1, 2), default=[1, 2],
                        help="1: one pool; 2: the all-gather outputs in a second pool (FSDP1's unshard stream)")
    parser.add_argument("--prefetch", action="store_true",
                        help="FSDP1 BACKWARD_PRE: gather the previous layer's unit when a unit's backward starts")
    parser.add_argument("--micro-steps", type=int, default=6, help="micro-steps (an optimizer step every 2)")
    args = parser.parse_args()
    settings = row_settings()
    config = vramfit.load_model(MODEL).config
    for layers in args.layers:
        for mode in args.dequant:
            start = time.perf_counter()
            tracker, ends, shared, unshard = trace_run(llama_config(config, layers), settings, dequant=mode == "on",
                                                       micro_steps=args.micro_steps, prefetch=args.prefetch)
            seconds = time.perf_counter() - start
            for streams in args.streams:
                marks = replay_marks(tracker, ends, unshard if streams == 2 else None)
                print(summary(layers, mode, streams, marks, shared, tracker.peak_bytes, seconds), flush=True)


def summary(layers: int, mode: str, streams: int, marks: list[dict[str, int]], shared: int, tracked: int, seconds: float) -> str:
    last = marks[-1]
    first = marks[1] if len(marks) > 1 else marks[0]
    per_step = " ".join(f"{(m['reserved'] - m['allocated']) / GiB:.2f}" for m in marks)
    return (f"layers {layers:2d}  dequant {mode:3s}  streams {streams}  micro-steps {len(marks)}  tracked peak {tracked / GiB:6.2f}  "
            f"allocated {last['allocated'] / GiB:6.2f}  reserved {last['reserved'] / GiB:6.2f}  "
            f"reserved-allocated {(last['reserved'] - last['allocated']) / GiB:+5.2f} (after optimizer step 1: "
            f"{(first['reserved'] - first['allocated']) / GiB:+5.2f}; per micro-step {per_step})  "
            f"shared bf16 {shared / GiB:.2f}  unshard pool {last['unshard_reserved'] / GiB:.2f}  segments {last['segments']}  [{seconds:.0f} s]")


if __name__ == "__main__":
    main()
