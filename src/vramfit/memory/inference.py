"""--mode inference: the most-loaded GPU's memory, component by component, for a stated runtime.

Composition only: the formulas are in weights, kv_cache, forward, overhead, sharding and runtimes.
The peak is found over the phases of generation, not summed over transients that never coexist:

  prefill moment   weights + cache(prompt) + the worst layer's transient
  head moment      weights + cache(prompt) + hidden states + logits
  decode moment    weights + cache(full length) + one decode step's transient + growing one layer's cache
                   + the last step's fp32 logits and sampling copies

Pipeline parallelism: every stage is planned and the one with the largest total is reported.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, replace
from operator import add
from typing import Any

from vramfit.errors import InvalidSetting
from vramfit.held import held
from vramfit.memory import forward, kv_cache, overhead, runtimes, sharding, weights
from vramfit.memory.gguf import tensor_type_bytes
from vramfit.memory.kv_cache import CacheLayout
from vramfit.memory.runtimes import Profile
from vramfit.model.architecture import Architecture, Layer, ParameterCount, distinct_layers, layer_counts
from vramfit.model.loaded import Model
from vramfit.result import Component, Parameters, Plan
from vramfit.settings import DTYPE_BYTES, TORCH_LAZY_MODULES, Settings


@dataclass(frozen=True, kw_only=True, slots=True)
class Stage:
    """One pipeline stage on one tensor-parallel rank: what it holds and how it runs."""

    arch: Architecture
    element_bytes: int   # bytes of the weights' and compute dtype
    fmt: weights.WeightFormat
    profile: Profile
    layers: tuple[Layer, ...]
    index: int
    last: bool
    weight_requests: tuple[int, ...]
    weight_reserve: overhead.ReserveSums   # the allocator's reserve sums of weight_requests
    groups: tuple[tuple[Layer, int], ...]   # the distinct layers and how many of each (layer_counts)
    distinct: tuple[Layer, ...]             # the distinct layers alone
    weights_bytes: int                      # sum(weight_requests)
    dequantized_bytes: int = 0   # the largest matrix a prefill matmul dequantizes (bnb 4-bit)


def plan(model: Model, settings: Settings) -> Plan:
    if settings.mode != "inference":
        raise InvalidSetting("mode: the inference planner got a training workload; pass --mode inference")
    setup = _setup(model, settings)
    fmt, count = setup.fmt, setup.count
    parameters = Parameters(total=count.total, trainable=count.total, active=count.active,
                            by_part=dict(count.by_part))   # the caller's own copy: the setup is shared
    if setup.profile.name == "llama.cpp":
        components, notes, extra = _llama_cpp(model.architecture, settings, fmt)
    else:
        results = [_run_stage(stage, settings) for stage in setup.stages]
        components, notes, extra = max(results, key=lambda r: sum(c.bytes for c in r[0]))
    draft = _draft(settings)
    return Plan(components=components + draft, parameters=parameters,
                notes=(f"weights: {fmt.summary}",) + notes, extra=extra)


@dataclass(frozen=True, kw_only=True, slots=True)
class Setup:
    """What an inference estimate takes from the model, the weight format, the parallelism and the runtime
    alone, whatever the workload: the format, the runtime's profile, the parameter count and each pipeline
    stage's tensors, their byte requests and its distinct layers."""

    fmt: weights.WeightFormat
    profile: Profile
    count: ParameterCount
    stages: tuple[Stage, ...]


def _setup(model: Model, settings: Settings) -> Setup:
    """_make_setup once per (model object, quant, dtype, runtime, parallelism): what it reads of the settings.
    Each entry holds its model, so the id is not reused while it lives; a failing layout raises every time."""
    precision = settings.precision
    key = (id(model), precision.quant, precision.dtype, settings.runtime.name, settings.parallelism)
    return held(_SETUPS, key, model, lambda: _make_setup(model, settings), _SETUPS_SIZE)


_SETUPS: dict[tuple[Any, ...], tuple[Model, Setup]] = {}
_SETUPS_SIZE = 256


def _make_setup(model: Model, settings: Settings) -> Setup:
    arch = model.architecture
    fmt = weights.resolve(quant_name(model, settings), settings.precision.dtype)
    profile = runtimes.profile(settings.runtime.name)
    _check_layout(arch, settings, fmt)
    fmt = weights.every_linear(fmt) if profile.quantizes_every_linear else fmt
    stages: tuple[Stage, ...] = ()
    if profile.name != "llama.cpp":
        stored = model.weight_dtype if profile.quantizes_stored_dtype else None
        stages = tuple(_stage(arch, settings, fmt, profile, s, stored) for s in range(settings.parallelism.pipeline))
    return Setup(fmt=fmt, profile=profile, count=arch.parameter_count(), stages=stages)


def quant_name(model: Model, settings: Settings) -> str:
    """--quant, else the config's quantization_config, else the dense dtype (GGUF F16/BF16 on llama.cpp)."""
    if settings.precision.quant:
        return settings.precision.quant
    if model.quantization_config:
        return weights.format_from_config(model.quantization_config)
    if settings.runtime.name == "llama.cpp":
        return "gguf-BF16" if settings.precision.dtype == "bf16" else "gguf-F16"
    return "none"


def _check_layout(arch: Architecture, settings: Settings, fmt: weights.WeightFormat) -> None:
    par, runtime = settings.parallelism, settings.runtime.name
    if settings.mode != "inference":
        raise InvalidSetting("mode: the inference planner got a training workload; pass --mode inference")
    if fmt.method == "gguf" and runtime != "llama.cpp":
        raise InvalidSetting(f"quant: {fmt.name} runs on llama.cpp only; pass --runtime llama.cpp, or a "
                             "format for this runtime (e.g. bnb-nf4, gptq-4bit-g128, awq-4bit-g128, fp8)")
    if runtime == "llama.cpp" and fmt.method not in ("gguf", "dense"):
        raise InvalidSetting(f"quant: llama.cpp runs GGUF files; pass --quant gguf-Q4_K_M (or another gguf-*) "
                             f"instead of {fmt.name}")
    if runtime == "llama.cpp" and (par.tensor > 1 or par.pipeline > 1):
        raise InvalidSetting("tp/pp: llama.cpp's multi-GPU split is not modelled; pass --tp 1 --pp 1")
    sharding.validate_tensor_parallel(arch, par.tensor)
    sharding.stage_layer_counts(arch.num_layers, par.pipeline)


def _stage(arch: Architecture, settings: Settings, fmt: weights.WeightFormat, profile: Profile,
           index: int, quantized_from: str | None = None) -> Stage:
    par, dtype = settings.parallelism, settings.precision.dtype
    tensors = sharding.rank_tensors(arch, tensor=par.tensor, stage=index, stages=par.pipeline, expert=par.expert,
                                    vocab_parallel=profile.vocab_parallel, head_parallel=profile.head_parallel)
    requests = weights.requests_bytes(fmt, tensors, dtype)
    layers = sharding.stage_layers(arch, index, par.pipeline)
    return Stage(arch=arch, element_bytes=DTYPE_BYTES[dtype], fmt=fmt, profile=profile, layers=layers, index=index,
                 last=index == par.pipeline - 1, weight_requests=requests,
                 weight_reserve=overhead.reserve_sums(Counter(requests)),
                 groups=layer_counts(layers), distinct=distinct_layers(layers), weights_bytes=sum(requests),
                 dequantized_bytes=weights.dequantized_matrix_bytes(fmt, tensors, dtype, quantized_from))


def _layout(stage: Stage, settings: Settings, *, prefill: bool = False) -> CacheLayout:
    s = settings
    cap = stage.profile.cap_window and not (prefill and stage.profile.prefill_keeps_prompt)
    return _cache_layout(s.precision.kv_dtype, s.precision.dtype, stage.profile.latent_mla, cap,
                         s.runtime.block_size if stage.profile.paged else 1, s.parallelism.tensor)


@functools.lru_cache(maxsize=1024)
def _cache_layout(kv_dtype: str, dtype: str, latent: bool, cap_window: bool, block: int, tensor: int) -> CacheLayout:
    """One CacheLayout object per combination (it is frozen; every estimate asks for two)."""
    return CacheLayout(element_bytes=kv_cache.element_bytes(kv_dtype, dtype), latent=latent, cap_window=cap_window,
                       block=block, tensor=tensor)


Result = tuple[tuple[Component, ...], tuple[str, ...], dict[str, Any]]


def _run_stage(stage: Stage, settings: Settings) -> Result:
    if stage.profile.preallocates:
        return _preallocated(stage, settings)
    return _on_demand(stage, settings)


# --- transformers: allocations on demand, peak over prefill and decode -------------------------------------

def _on_demand(stage: Stage, settings: Settings) -> Result:
    w = settings.workload
    sequences = kv_cache.sequences_in_cache(w.batch_size, w.num_beams, w.num_return_sequences)
    prompt_cache = _prefill_cache(stage, settings, sequences)   # the prefill's and the head's
    full_sizes = _layer_sizes(stage, sequences, w.seq_len, _layout(stage, settings))   # at the full length
    moments = [_prefill_moment(stage, settings, sequences, prompt_cache), _head_moment(stage, settings, sequences, prompt_cache)]
    if w.new_tokens:
        moments.append(_decode_moment(stage, settings, sequences, full_sizes))
    name, cache, activations, logits = max(moments, key=lambda m: m[1] + m[2] + m[3])
    kv_requests: dict[int, int] = {}   # K and V of every layer: two requests of half its cache each
    for size, layers in full_sizes.items():
        kv_requests[size // 2] = kv_requests.get(size // 2, 0) + 2 * layers
    reserve = tuple(map(add, stage.weight_reserve, overhead.reserve_sums(kv_requests)))
    components = (
        _weights(stage, settings),
        Component(name="kv_cache", bytes=cache, formula="sum over layers of 2 x sequences x tokens x kv_heads x "
                  "head_dim x bytes (MLA: decompressed K/V; sliding layers: window)",
                  inputs={"sequences": sequences, "phase": name}, source=_KV_SOURCE),
        Component(name="activations", bytes=activations, formula=f"transient of the {name} moment",
                  inputs={"attention": settings.runtime.attention}, source="vramfit.memory.forward"),
        Component(name="logits", bytes=logits, formula="rows x vocab x (dtype + fp32 copies)",
                  source="transformers generation/utils.py logits_to_keep=1, .to(copy=True, dtype=torch.float32)"),
        overhead.cublas_workspace(_hopper(settings)),
        overhead.allocator_reserve(reserve),
        overhead.cuda_context(eager=settings.runtime.torch_before(TORCH_LAZY_MODULES)),
        *_nccl(settings.parallelism.tensor),
    )
    return components, (f"peak at the {name} moment",), {}


@functools.lru_cache(maxsize=64)
def _nccl(tensor: int) -> tuple[Component, ...]:
    """Tensor parallelism all-reduces over NCCL (transformers' tp_plan, litgpt generate/tp.py): its communicator's
    buffers, device level (overhead.nccl_buffers). A pipeline split here is a device map that copies activations
    between GPUs without NCCL."""
    nccl = overhead.nccl_buffers((tensor,))
    return () if nccl is None else (nccl,)


Moment = tuple[str, int, int, int]  # name, cache, activations, logits
_KV_SOURCE = (kv_cache.__doc__ or "").splitlines()[0]


def _layer_sizes(stage: Stage, sequences: int, tokens: int, layout: CacheLayout) -> dict[int, int]:
    """One layer's cache bytes -> how many of the stage's layers hold that much."""
    return kv_cache.layer_sizes(stage.groups, sequences=sequences, tokens=tokens, layout=layout)


def _cache(stage: Stage, sequences: int, tokens: int, layout: CacheLayout) -> int:
    """The stage's whole cache: kv_cache.cache_bytes over its distinct layers, times their counts."""
    return kv_cache.total_bytes(_layer_sizes(stage, sequences, tokens, layout))


def _prefill_cache(stage: Stage, settings: Settings, sequences: int) -> int:
    """The cache during the prefill: the prompt's, or the whole length where it is allocated up front."""
    w = settings.workload
    tokens = w.seq_len if stage.profile.cache_before_prefill else w.prompt_len
    return _cache(stage, sequences, tokens, _layout(stage, settings, prefill=True))


def _prefill_moment(stage: Stage, settings: Settings, sequences: int, cache: int) -> Moment:
    w = settings.workload
    prompt = w.prompt_len
    chunk = min(w.prefill_chunk or prompt, prompt)
    p = _pass(stage, settings, sequences=sequences, tokens=chunk, context=prompt)
    dequantized = stage.dequantized_bytes if chunk > 1 else 0
    return "prefill", cache, forward.prefill_bytes(stage.arch, stage.distinct, p) + dequantized, 0


def _head_moment(stage: Stage, settings: Settings, sequences: int, cache: int) -> Moment:
    w = settings.workload
    if not stage.last:
        return "head", cache, 0, 0
    rows = sequences if w.new_tokens and not stage.profile.all_position_logits else sequences * w.prompt_len
    # the base model has returned: only its last_hidden_state (the final norm's output) feeds lm_head
    hidden = sequences * w.prompt_len * stage.arch.hidden_size * stage.element_bytes
    logits = forward.logits_bytes(stage.arch.vocab_size, rows=rows, element_bytes=stage.element_bytes,
                                  fp32_copies=1 if w.new_tokens else 0)
    return "head", cache, hidden, logits + _extra_logits_bytes(stage, settings, rows)


def _pass(stage: Stage, settings: Settings, *, sequences: int, tokens: int, context: int) -> forward.Pass:
    s = settings
    return forward.Pass(sequences=sequences, tokens=tokens, context=context, element_bytes=stage.element_bytes,
                        attention=s.runtime.attention, dtype=s.precision.dtype, tensor=s.parallelism.tensor)


def _gathers_logits(stage: Stage, settings: Settings) -> bool:
    """transformers' lm_head `colwise_gather_output` (integrations/tensor_parallel.py): each rank computes
    its vocabulary slice and DTensor's Shard -> Replicate all-gathers it (funcol.all_gather_tensor: the
    gathered [tp x rows, vocab / tp] buffer, then torch.cat of its chunks along the vocabulary), so the
    local slice, the gathered buffer and the full logits are alive at the cat. A tied head stays whole."""
    p = stage.profile
    return (settings.parallelism.tensor > 1 and p.head_parallel and not p.vocab_parallel
            and not stage.arch.head.tied)


def _extra_logits_bytes(stage: Stage, settings: Settings, rows: int) -> int:
    """Model-dtype logits beyond the one copy of logits_bytes: the TP gather's buffer and local slice, or
    soft-capping's second copy, whichever moment is larger (they follow one another). Soft-capping
    (Head.logit_softcap, config.json's final_logit_softcapping): the CausalLM divides, tanh's and multiplies
    the logits out of place (models/gemma2/modeling_gemma2.py Gemma2ForCausalLM.forward), so two full logits
    tensors are alive at once."""
    full = rows * stage.arch.vocab_size * stage.element_bytes
    gathered = full + -(-full // settings.parallelism.tensor) if _gathers_logits(stage, settings) else 0
    return max(gathered, full if stage.arch.head.logit_softcap is not None else 0)


def _decode_moment(stage: Stage, settings: Settings, sequences: int, sizes: dict[int, int]) -> Moment:
    """`sizes`: each layer's cache at the full length (_layer_sizes)."""
    w = settings.workload
    cache = kv_cache.total_bytes(sizes)
    growth = max((size // 2 for size in sizes), default=0)   # one layer's K or V grows by a token
    p = _pass(stage, settings, sequences=sequences, tokens=1, context=w.seq_len)
    step = forward.prefill_bytes(stage.arch, stage.distinct, p) + growth
    logits = forward.logits_bytes(stage.arch.vocab_size, rows=sequences, element_bytes=stage.element_bytes,
                                  fp32_copies=2) if stage.last else 0
    return "decode", cache, step, logits


# --- vLLM / SGLang: a pre-allocated pool ----------------------------------------------------------------------

def _preallocated(stage: Stage, settings: Settings) -> Result:
    s = settings
    tokens = s.workload.prefill_chunk or runtimes.VLLM_MAX_BATCHED_TOKENS
    p = forward.Pass(sequences=1, tokens=tokens, context=tokens, element_bytes=stage.element_bytes,
                     attention="flash", tensor=s.parallelism.tensor)
    activations = forward.prefill_bytes(stage.arch, stage.distinct, p)
    seqs = min(s.runtime.max_num_seqs or runtimes.VLLM_MAX_NUM_SEQS, tokens)
    hidden = tokens * stage.arch.hidden_size * stage.element_bytes
    logits = forward.sampler_bytes(stage.arch.vocab_size, rows=seqs, element_bytes=stage.element_bytes) + hidden \
        if stage.last else 0
    activations, logits = (activations, 0) if activations >= logits else (0, logits)
    context = overhead.vllm_non_torch(s.parallelism.tensor)
    used = stage.weights_bytes + activations + logits + context.bytes
    cache, notes, extra = _pool(stage, settings, used)
    components = (
        _weights(stage, settings),
        Component(name="kv_cache", bytes=cache, formula="pool: utilization x GPU memory - weights - profile "
                  "peak - non-torch, in whole blocks", source=stage.profile.source),
        Component(name="activations", bytes=activations,
                  formula=f"profiling forward of max_num_batched_tokens={tokens}", source="vramfit.memory.forward"),
        Component(name="logits", bytes=logits, formula=f"sampler dummy run: {seqs} rows x vocab x (dtype + 21) "
                  "+ the batch's hidden states", source="vLLM gpu_model_runner._dummy_sampler_run; "
                  "v1/sample/ops/topk_topp_sampler.py apply_top_k_top_p"),
        context,
    )
    return components, notes, extra


def _pool(stage: Stage, settings: Settings, used: int) -> tuple[int, tuple[str, ...], dict[str, Any]]:
    from vramfit import gpus

    s = settings
    w = s.workload
    layout = _layout(stage, settings)
    demand = _cache(stage, w.batch_size, w.seq_len, layout)
    capacity = gpus.capacity_bytes(s.gpu, s.gpu_memory)
    if capacity is None:
        note = (f"{stage.profile.name}: no --gpu given, so the KV cache shown is this workload's "
                "(batch x seq-len, whole blocks), not the pre-allocated pool")
        return demand, (note,), {}
    budget = int(s.runtime.gpu_memory_utilization * capacity)
    per_token = kv_cache.bytes_per_token(stage.layers, replace(layout, block=1))
    pool = runtimes.vllm_pool(budget - used, bytes_per_token=per_token, block_size=layout.block,
                              seq_len=w.seq_len)
    extra = {stage.profile.name: {"kv_cache_tokens": pool.tokens, "max_full_length_sequences":
                                  pool.full_length_sequences, "num_blocks": pool.blocks, "block_size": layout.block,
                                  "kv_cache_bytes_per_token": pool.bytes_per_token, "kv_cache_bytes": pool.bytes,
                                  "budget_bytes": budget}}
    graphs = f"{stage.profile.name}: CUDA graph capture happens after the pool is sized and is not counted here"
    notes: tuple[str, ...] = (graphs,)
    if pool.bytes < demand:
        short = (f"{stage.profile.name}: the pool holds {pool.tokens} tokens, fewer than batch x seq-len "
                 f"({w.batch_size * w.seq_len}); requests would queue or the engine would refuse to start")
        notes += (short,)
    return pool.bytes, notes, extra


# --- llama.cpp ------------------------------------------------------------------------------------------------

def _llama_cpp_weights(arch: Architecture, fmt: weights.WeightFormat, dtype: str, *, first_gpu: int,
                       output_on_gpu: bool) -> int:
    """GGUF bytes of the tensors on the GPU: blocks from `first_gpu` on, the head side when offloaded,
    never the token embedding (it stays in host memory)."""
    file_type = fmt.name.removeprefix("gguf-") if fmt.method == "gguf" else ("BF16" if dtype == "bf16" else "F16")
    seen_block, total = False, 0
    for tensor, kind in weights.gguf_tensor_types(arch, file_type):
        seen_block = seen_block or tensor.layer is not None
        on_gpu = tensor.layer >= first_gpu if tensor.layer is not None else (seen_block and output_on_gpu)
        total += tensor_type_bytes(kind, tensor.elements) if on_gpu else 0
    return total


def _llama_cpp(arch: Architecture, settings: Settings, fmt: weights.WeightFormat) -> Result:
    s, w = settings, settings.workload
    gpu_layers, output_on_gpu = runtimes.llama_cpp_gpu_layers(arch.num_layers, s.runtime.n_gpu_layers)
    first_gpu = arch.num_layers - gpu_layers
    weight_bytes = _llama_cpp_weights(arch, fmt, s.precision.dtype, first_gpu=first_gpu, output_on_gpu=output_on_gpu)
    layers = tuple(arch.layers())[first_gpu:]
    context = runtimes.llama_cpp_context(w.batch_size * w.seq_len)
    layout = CacheLayout(element_bytes=kv_cache.element_bytes(s.precision.kv_dtype, "fp16", ggml=True),
                         latent=True, cap_window=False)
    cache = kv_cache.cache_bytes(layers, sequences=1, tokens=context, layout=layout)
    heads = max((layer.attention.heads for layer in layers), default=0)
    compute = runtimes.llama_cpp_compute_bytes(context=context, heads=heads, hidden=arch.hidden_size,
                                               vocab=arch.vocab_size, flash=s.runtime.attention == "flash",
                                               logits_on_gpu=output_on_gpu) if layers else 0
    src = runtimes.PROFILES["llama.cpp"].source
    components = (
        Component(name="weights", bytes=weight_bytes, level="device", formula="GGUF tensors of the offloaded "
                  "blocks (and the output layer when -ngl exceeds them)", inputs={"gpu_layers": gpu_layers},
                  source=fmt.source),
        Component(name="kv_cache", bytes=cache, level="device", formula="offloaded layers x n_ctx (padded to 256) "
                  "x K+V per token, f16 by default", inputs={"n_ctx": context}, source=src),
        Component(name="activations", bytes=compute, level="device", formula="compute buffer: largest graph "
                  "moment of one n_ubatch", source=src),
        overhead.cuda_context(),
    )
    notes = ("llama.cpp allocates outside PyTorch: every component is at device level",
             "llama.cpp's sliding-window cache cap (SWA without --swa-full) is not modelled: full n_ctx is counted")
    return components, notes, {"llama.cpp": {"n_ctx": context, "gpu_layers": gpu_layers,
                                             "output_on_gpu": output_on_gpu}}


# --- shared pieces ----------------------------------------------------------------------------------------

def _weights(stage: Stage, settings: Settings) -> Component:
    par = settings.parallelism
    return Component(name="weights", bytes=stage.weights_bytes,
                     formula="sum over this GPU's tensor slices of their bytes in the format",
                     inputs={"format": stage.fmt.name, "dtype": settings.precision.dtype, "tp": par.tensor,
                             "pp_stage": stage.index}, source=stage.fmt.source)


def _hopper(settings: Settings) -> bool:
    if not settings.gpu:
        return False
    from vramfit import gpus

    return gpus.lookup(settings.gpu).architecture == "hopper"


def _draft(settings: Settings) -> tuple[Component, ...]:
    """Speculative decoding: the draft model's own weights and KV cache (same sequences and length)."""
    name = settings.runtime.draft_model
    if not name:
        return ()
    from vramfit.model.sources import load_model

    draft = load_model(name)
    w = settings.workload
    dense = weights.resolve("none", settings.precision.dtype)
    wbytes = weights.model_weight_bytes(draft.architecture, dense, settings.precision.dtype)
    layout = CacheLayout(element_bytes=kv_cache.element_bytes(settings.precision.kv_dtype, settings.precision.dtype),
                         latent=settings.runtime.name != "transformers", cap_window=True)
    sequences = kv_cache.sequences_in_cache(w.batch_size, w.num_beams, w.num_return_sequences)
    cache = kv_cache.cache_bytes(tuple(draft.architecture.layers()), sequences=sequences, tokens=w.seq_len,
                                 layout=layout)
    return (Component(name="draft_weights", bytes=wbytes, formula="draft model parameters x dtype bytes",
                      inputs={"draft": name}, source="vramfit.memory.weights"),
            Component(name="draft_kv_cache", bytes=cache, formula="draft model's KV cache for the same sequences",
                      inputs={"draft": name}, source="vramfit.memory.kv_cache"))
