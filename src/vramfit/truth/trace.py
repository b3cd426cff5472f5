"""Trace one real step without memory: the transformers model built from its config under FakeTensorMode
on the CPU device (no weights, no GPU), the step run for real, every live storage counted.

What runs (the "real step"):
- inference, new_tokens = 0: one forward over batch x seq_len tokens under no_grad (full logits).
- inference, new_tokens > 0: what `generate` does, greedy: a prefill of the prompt with logits_to_keep=1
  and a DynamicCache(config) (transformers generation/utils.py sets logits_to_keep=1 and copies the last
  logits to fp32 each step), then decode steps of one token. To stay fast, all but the last
  DECODE_STEPS generated tokens are appended to the cache in one update per layer (the same tensor sizes
  a token-by-token decode leaves behind), then the last steps run for real.
- training: a warm-up that creates the optimizer state (fake gradients + optimizer.step()), then the
  measured step: grad_accum micro-batches of forward (labels = inputs, use_cache=False) and backward,
  then optimizer.step(). PEFT LoRA/DoRA adapters, gradient checkpointing (non-reentrant) and the chosen
  optimizer are the real ones; torch optimizers run with foreach=True, their default on CUDA.

Where fake tensors cannot follow, `Untraceable` says so and names `vramfit measure` on a GPU.
Known small differences from a GPU: the optimizer's step counters are CPU scalars on a GPU too but are
counted here (512 bytes per parameter tensor); "flash" attention is traced as sdpa (neither materialises
the attention matrix); autocast (amp) follows the CPU autocast op lists.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vramfit.errors import InvalidSetting, MissingExtra
from vramfit.estimate import resolve_settings
from vramfit.model.loaded import Model
from vramfit.settings import Settings

DECODE_STEPS = 4
_MEASURE = "run the same step on a GPU with `vramfit measure` instead"


class Untraceable(InvalidSetting):
    """A setting whose step fake tensors cannot run; the message names the alternative."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TraceResult:
    """The traced peak (bytes of live storages, 512-byte rounded) and what was live at it."""

    model: str
    peak_bytes: int
    breakdown: dict[str, int]
    settings: Settings
    seconds: float
    ranks: tuple[int, ...] = ()          # each rank's peak, for multi-rank traces
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "peak": {"allocated": self.peak_bytes}, "breakdown": dict(self.breakdown),
                "settings": self.settings.to_dict(), "seconds": round(self.seconds, 2),
                **({"ranks": list(self.ranks)} if self.ranks else {}), "notes": list(self.notes)}


def trace_row(result: TraceResult, *, model_id: str, row_id: str | None = None, group: str = "") -> Any:
    """The result as a truth row (kind traced, measure allocated), with the environment that produced it."""
    import torch
    import transformers

    from vramfit.truth.rows import TruthRow

    return TruthRow(id=row_id or f"trace/{model_id}/{settings_tag(result.settings)}", kind="traced",
                    model=model_id, settings=result.settings.to_dict(), truth={"allocated": result.peak_bytes},
                    measure="allocated", group=group, breakdown={**result.breakdown, "ranks": list(result.ranks)},
                    env={"torch": torch.__version__, "transformers": transformers.__version__,
                         "seconds": round(result.seconds, 2)},
                    source={"tool": "vramfit trace", "notes": list(result.notes)})


def settings_tag(settings: Settings) -> str:
    w, t, p = settings.workload, settings.training, settings.parallelism
    tag = f"{settings.mode}-b{w.batch_size}-s{w.seq_len}-{settings.precision.dtype}"
    if p.gpus > 1:
        tag += f"-gpus{p.gpus}-tp{p.tensor}-fsdp-{p.fsdp}"
    if settings.mode == "inference":
        return tag + f"-new{w.new_tokens}-{settings.runtime.attention}"
    return tag + f"-{t.finetune}-{t.optimizer}-ckpt-{t.grad_ckpt}-ga{w.grad_accum}"


def require_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise MissingExtra("trace and measure need torch and transformers: pip install 'vramfit[truth]'") from None
    return torch


def check_traceable(settings: Settings) -> None:
    """Refuse, with the reason and the alternative, what fake tensors or this tracer cannot run."""
    p, t, w, r = settings.precision, settings.training, settings.workload, settings.runtime
    training = settings.mode == "training"
    reasons = [
        (p.quant is not None, f"quant {p.quant}: quantized kernels (bitsandbytes, GPTQ, AWQ) cannot run on fake tensors"),
        (training and t.finetune == "qlora", "finetune qlora: bitsandbytes 4-bit kernels cannot run on fake tensors"),
        (p.kv_dtype != "auto", f"kv_dtype {p.kv_dtype}: quantized KV caches are not traced"),
        (r.name != "transformers", f"runtime {r.name}: only transformers steps are traced"),
        (training and t.optimizer in ("adamw-8bit", "paged-adamw-8bit", "lion"),
         f"optimizer {t.optimizer}: not a torch optimizer (bitsandbytes / third party)"),
        (training and t.grad_ckpt == "selective", "grad_ckpt selective: transformers has no selective checkpointing"),
        (training and t.activation_offload, "activation_offload: not traced"),
        (training and t.framework != "transformers", f"framework {t.framework}: only transformers steps are traced"),
        (w.num_beams > 1 or w.num_return_sequences > 1, "beam search / several sequences: not traced"),
        (w.prefill_chunk is not None, "prefill_chunk: chunked prefill is a serving-engine feature, not traced"),
        (settings.parallelism.offload != "none", "offload: CPU/NVMe offloading is not traced"),
    ]
    for refused, reason in reasons:
        if refused:
            raise Untraceable(f"{reason}; {_MEASURE}")


def check_generation(model: Model, settings: Settings) -> None:
    """Inference needs a decoder alone or an encoder alone: an encoder generates nothing (one forward pass),
    and encoder-decoder inference is not traced."""
    if settings.mode != "inference":
        return
    if model.architecture.encoder is not None and model.architecture.decoder is not None:
        raise Untraceable(f"inference with the encoder-decoder {model.name} is not traced (what the decoder is "
                          f"fed is a choice of the serving code); {_MEASURE}, or trace --mode training")
    if settings.workload.new_tokens and model.architecture.decoder is None:
        raise InvalidSetting(f"new_tokens: {model.name} is an encoder and generates no tokens; pass --new-tokens 0 "
                             "(one forward pass)")


def prepare_step(model: Model | str, settings: Settings) -> tuple[Model, Settings]:
    """The model loaded and the settings resolved and checked, as trace and measure both run them."""
    if isinstance(model, str):
        from vramfit.model.sources import load_model

        model = load_model(model)
    settings = resolve_settings(settings, model).validate()
    check_traceable(settings)
    check_generation(model, settings)
    return model, settings


def trace(model: Model | str, settings: Settings, *, fake: bool = True) -> TraceResult:
    """The traced peak of one step of `model` under `settings`. fake=False runs the same step on real CPU
    tensors (random weights; only for tiny models: tests use it to check the fake trace against it)."""
    torch = require_torch()
    model, settings = prepare_step(model, settings)
    from vramfit.truth import distributed

    start = time.perf_counter()
    notes: list[str] = []
    kind = distributed.layout(settings)
    if kind == "single":
        tracker = _trace_once(torch, model, settings, notes, fake=fake)
        return TraceResult(model=model.name, peak_bytes=tracker.peak_bytes, breakdown=tracker.breakdown(),
                           settings=settings, seconds=time.perf_counter() - start, notes=tuple(notes))
    trackers = []
    for rank in distributed.ranks_to_trace(settings):
        with distributed.fake_world(settings.parallelism.gpus, rank):
            mesh = distributed.device_mesh(settings)
            trackers.append(_trace_once(torch, model, settings, notes, fake=fake, wrap=lambda module, mesh=mesh: (
                distributed.distribute(module, settings, mesh, kind))))
    busiest = max(trackers, key=lambda t: t.peak_bytes)
    notes.append(f"{kind} over a fake process group of {settings.parallelism.gpus} ranks; traced ranks "
                 f"{distributed.ranks_to_trace(settings)}")
    return TraceResult(model=model.name, peak_bytes=busiest.peak_bytes, breakdown=busiest.breakdown(),
                       settings=settings, seconds=time.perf_counter() - start,
                       ranks=tuple(t.peak_bytes for t in trackers), notes=tuple(notes))


def _trace_once(torch: Any, model: Model, settings: Settings, notes: list[str], *, fake: bool,
                wrap: Any = None) -> Any:
    """Build, (distribute,) and run one step under a fresh tracker; returns the tracker."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vramfit.truth.tracker import LiveTensorTracker

    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with mode, _fake_failures(), _fused_dropout(), _unpadded_inputs() if fake else contextlib.nullcontext():
        module = build_model(model, settings, notes, fake=fake)
        with LiveTensorTracker() as tracker:
            if wrap is not None:   # tracked: what DDP (its gradient buckets) or FSDP (the shards) allocates
                module = wrap(module)
            tracker.mark(module.parameters(), "parameters")
            tracker.mark(module.buffers(), "buffers")
            tracker.label_live("distributed_buffers")   # the rest that stays: DDP's buckets, FSDP's own
            tracker.reset_peak()   # what stays after setting up, not its transients
            run_step(torch, module, settings, tracker, {})
    return tracker


@contextlib.contextmanager
def _fake_failures() -> Iterator[None]:
    """Data-dependent operators (some MoE routing, nonzero, item) end a fake trace: say so and name measure."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    try:
        yield
    except (DataDependentOutputException, DynamicOutputShapeException) as error:
        raise Untraceable(f"the step uses a data-dependent operator ({error}) that fake tensors cannot run; "
                          f"{_MEASURE}") from None


@contextlib.contextmanager
def _fused_dropout() -> Iterator[None]:
    """Dropout as it runs on a GPU. aten/src/ATen/native/Dropout.cpp `dropout()` takes the fused
    `native_dropout` only where `is_fused_kernel_acceptable` (CUDA, XPU, lazy, privateuse1 tensors): it saves a
    bool mask (1 byte per element). On the CPU it falls back to `_dropout_impl`, `input * empty_like(input)
    .bernoulli_(1 - p).div_(1 - p)`, whose saved noise has the input's dtype (2 bytes in bf16), which a CPU
    trace would count for every nn.Dropout in train mode (BERT and GPT-2 blocks, PEFT's lora_dropout). The
    GPU's path is taken here: torch.native_dropout, which has a CPU kernel with the same outputs."""
    import torch
    from torch.nn import functional

    original = functional.dropout

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if not training or p == 0 or inplace:
            return original(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    functional.dropout = dropout
    try:
        yield
    finally:
        functional.dropout = original


@contextlib.contextmanager
def _unpadded_inputs() -> Iterator[None]:
    """Let transformers see the inputs as a GPU run would: neither padded nor packed.

    On real tensors transformers' masking_utils reads the inputs, finds no padding and no packed sequences,
    and lets SDPA apply causality itself (no mask tensor; GQA handled by SDPA's enable_gqa). Fake tensors
    cannot be read, so it would assume the worst: build a full boolean mask and repeat K and V to every
    head. The traced inputs are never padded or packed, so the answer the data would give is given here."""
    from transformers import masking_utils

    is_tracing = getattr(masking_utils, "is_tracing")  # noqa: B009  (imported there, not exported)
    find_packed = masking_utils.find_packed_sequence_indices
    setattr(masking_utils, "is_tracing", lambda tensor=None: is_tracing(None))  # noqa: B010
    setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)  # noqa: B010
    try:
        yield
    finally:
        setattr(masking_utils, "is_tracing", is_tracing)  # noqa: B010
        setattr(masking_utils, "find_packed_sequence_indices", find_packed)  # noqa: B010


# --- the model -------------------------------------------------------------------------------------------

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def hf_config(model: Model, settings: Settings, notes: list[str]) -> Any:
    """The transformers config from the model's config.json, with the attention implementation set."""
    import transformers

    if not model.config:
        raise Untraceable(f"{model.name}: no config.json (a model described by numbers) has no real model to run; "
                          "pass a hub id or a config.json")
    if model.quantization_config:
        raise Untraceable(f"{model.name}: config.json has a quantization_config "
                          f"({model.quantization_config.get('quant_method')}); its kernels cannot run on fake tensors. "
                          f"Trace a copy of the config without it (the unquantized layout), or {_MEASURE[0].lower()}"
                          f"{_MEASURE[1:]}")
    fields = {key: value for key, value in model.config.items() if key != "model_type"}
    config = transformers.AutoConfig.for_model(model.config["model_type"], **fields)
    attention = settings.runtime.attention
    if attention == "flash":
        notes.append("attention flash traced as sdpa: flash-attention kernels do not exist on the CPU; neither "
                     "materialises the attention matrix")
        attention = "sdpa"
    config._attn_implementation = attention
    if attention == "sdpa" and settings.mode == "training":
        _attention_dropout_in_kernel(config, notes)
    return config


# config.json's names for the dropout applied to attention probabilities (Llama and most; GPT-2; BERT).
_ATTENTION_DROPOUT = ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob")


def _attention_dropout_in_kernel(config: Any, notes: list[str]) -> None:
    """On CUDA, SDPA's flash and memory-efficient kernels apply attention dropout inside the kernel (a
    philox seed, no mask, no score matrix); on the CPU, SDPA with dropout_p > 0 falls back to the math path,
    which materialises the softmax and a dropout mask per layer (seen here: aten._safe_softmax and
    aten.bernoulli_ replace _scaled_dot_product_flash_attention_for_cpu). The trace therefore runs attention
    with dropout 0, which the GPU kernels match in memory; dropout elsewhere (hidden, residual) is kept."""
    for name in _ATTENTION_DROPOUT:
        if getattr(config, name, 0) or 0:
            notes.append(f"{name}={getattr(config, name)} traced as 0: on a GPU the SDPA kernel applies it "
                         "internally, on the CPU it would fall back to the math path")
            setattr(config, name, 0.0)


def build_model(model: Model, settings: Settings, notes: list[str], *, fake: bool = True) -> Any:
    """The model class config.json names (its `architectures`), built from the config in the step's dtype,
    wrapped by PEFT for LoRA/DoRA, with gradient checkpointing when asked; call under FakeTensorMode."""
    import torch
    import transformers

    config = hf_config(model, settings, notes)
    dtype = getattr(torch, _DTYPES[settings.precision.dtype])
    names = model.config.get("architectures") or []
    cls = getattr(transformers, names[0], None) if names else None
    factory = cls._from_config if cls is not None else transformers.AutoModelForCausalLM.from_config
    try:
        module = factory(config, dtype=dtype)
    except ValueError as error:
        if "attn_implementation" in str(error) or "sdpa" in str(error).lower():
            raise Untraceable(f"{model.name}: {error}; pass --attention eager") from None
        raise
    if settings.mode == "training":
        module = prepare_training(module, settings, fake=fake)
    return module


def prepare_training(module: Any, settings: Settings, *, fake: bool = True) -> Any:
    t = settings.training
    module.train()
    if t.grad_ckpt == "full":
        if hasattr(module, "activation_checkpointing_enable"):   # transformers >= 5.x's name
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.finetune in ("lora", "dora"):
        module = with_lora(module, settings, fake=fake)
    if t.frozen_layers:
        for name, parameter in module.named_parameters():
            if _layer_index(name) is not None and _layer_index(name) < t.frozen_layers:  # type: ignore[operator]
                parameter.requires_grad_(False)
    return module


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for before, after in itertools.pairwise(parts):
        if before in ("layers", "h", "layer", "blocks") and after.isdigit():
            return int(after)
    return None


def with_lora(module: Any, settings: Settings, *, fake: bool = True) -> Any:
    """PEFT's own adapters. Its injection moves each adapter to the base layer's device and dtype with
    `Module.to()`, which fake parameters refuse ("Couldn't swap"); on one device that move only changes the
    dtype, and PEFT's default autocast_adapter_dtype=True casts bf16/fp16 adapters back to fp32 afterwards,
    so adapters created in fp32 and left unmoved end where PEFT leaves them. Both moves are skipped while
    the adapters are injected into a fake model (a real one keeps PEFT's own moves)."""
    import peft
    import torch
    from peft.tuners import tuners_utils

    lora = settings.training.lora
    targets: Any = "all-linear" if lora.targets == ("all-linear",) else list(lora.targets)
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             use_dora=settings.training.finetune == "dora",
                             task_type="CAUSAL_LM" if _generates(module) else None)
    if not fake:
        return _peft(peft, module, config)
    original_move = tuners_utils.BaseTunerLayer._move_adapter_to_device_of_base_layer
    original_to = torch.nn.Module.to
    tuners_utils.BaseTunerLayer._move_adapter_to_device_of_base_layer = lambda self, *a, **k: None  # type: ignore
    torch.nn.Module.to = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():   # PEFT calls transformers' deprecated is_gradient_checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            return _peft(peft, module, config)
    finally:
        tuners_utils.BaseTunerLayer._move_adapter_to_device_of_base_layer = original_move  # type: ignore
        torch.nn.Module.to = original_to  # type: ignore[method-assign]


def _generates(module: Any) -> bool:
    """A decoder PEFT wraps as CAUSAL_LM; an encoder gets PEFT's plain PeftModel."""
    can_generate = getattr(module, "can_generate", None)
    return bool(can_generate()) if callable(can_generate) else False


def _peft(peft: Any, module: Any, config: Any) -> Any:
    try:
        return peft.get_peft_model(module, config)
    except ValueError as error:   # PEFT's NoMatchingPeftModuleError and target-name errors
        import torch

        names = sorted({n.split(".")[-1] for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)})
        raise InvalidSetting(f"lora_targets: {error}; this model's linear layers are named "
                             f"{', '.join(names)} (or pass all-linear)") from None


# --- the steps -------------------------------------------------------------------------------------------


def _tokens(torch: Any, module: Any, batch: int, length: int) -> Any:
    """Token ids on the model's device (their values never change the memory of a dense step)."""
    return torch.zeros(batch, length, dtype=torch.long, device=next(module.parameters()).device)


def infer_step(torch: Any, module: Any, settings: Settings, tracker: Any) -> None:
    w = settings.workload
    module.eval()
    with torch.no_grad():
        if w.new_tokens == 0:
            out = module(input_ids=_tokens(torch, module, w.batch_size, w.seq_len))
            tracker.mark(_cache_tensors(getattr(out, "past_key_values", None)), "kv_cache")
            return
        generate(torch, module, settings, tracker)


def generate(torch: Any, module: Any, settings: Settings, tracker: Any) -> None:
    """Greedy generation as transformers' generate runs it (see the module docstring)."""
    from transformers import DynamicCache

    w = settings.workload
    cache = DynamicCache(config=module.config)
    ids = _tokens(torch, module, w.batch_size, w.prompt_len)
    ids = _next(torch, module, ids, ids, cache, tracker, logits_to_keep=1)
    skipped = max(0, w.new_tokens - 1 - DECODE_STEPS)
    if skipped:
        _grow_cache(torch, cache, skipped)
        ids = torch.cat([ids, _tokens(torch, module, w.batch_size, skipped)], dim=-1)
    for _ in range(w.new_tokens - 1 - skipped):
        ids = _next(torch, module, ids, ids[:, -1:], cache, tracker)


def _next(torch: Any, module: Any, ids: Any, step_input: Any, cache: Any, tracker: Any, **kwargs: Any) -> Any:
    out = module(input_ids=step_input, past_key_values=cache, use_cache=True, **kwargs)
    logits = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
    del out
    token = logits.argmax(dim=-1, keepdim=True)
    tracker.mark(_cache_tensors(cache), "kv_cache")
    return torch.cat([ids, token], dim=-1)


def _grow_cache(torch: Any, cache: Any, tokens: int) -> None:
    """Append `tokens` positions to every layer, as that many decode steps would (one cat per layer)."""
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        shape_k = (*keys.shape[:-2], tokens, keys.shape[-1])
        shape_v = (*values.shape[:-2], tokens, values.shape[-1])
        layer.update(keys.new_zeros(shape_k), values.new_zeros(shape_v))


def _cache_tensors(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None) or []
    return [tensor for layer in layers for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))]


def run_step(torch: Any, module: Any, settings: Settings, tracker: Any, state: dict[str, Any]) -> None:
    """One step of the mode; `state` keeps the optimizer between calls (measure's warm-up, then its step)."""
    if settings.mode == "training":
        train_step(torch, module, settings, tracker, state)
    else:
        infer_step(torch, module, settings, tracker)


def train_step(torch: Any, module: Any, settings: Settings, tracker: Any, state: dict[str, Any]) -> None:
    """Warm-up (optimizer state) on the first call, then the measured step: micro-batches, backward,
    optimizer.step(). The peak restarts after the warm-up, with the gradients already freed."""
    w = settings.workload
    trainable = [p for p in module.parameters() if p.requires_grad]
    if "optimizer" not in state:
        state["optimizer"] = make_optimizer(torch, trainable, settings.training.optimizer)
        for parameter in trainable:
            parameter.grad = torch.zeros_like(parameter)
        state["optimizer"].step()
    optimizer = state["optimizer"]
    optimizer.zero_grad(set_to_none=True)
    tracker.mark(_optimizer_tensors(optimizer), "optimizer_state")
    tracker.reset_peak()
    autocast = _autocast(torch, settings, trainable[0].device.type)
    for _ in range(w.grad_accum):
        ids = _tokens(torch, module, w.batch_size, w.seq_len)
        with autocast():
            loss = module(input_ids=ids, labels=ids, use_cache=False).loss / w.grad_accum
        loss.backward()
        del loss
        tracker.mark((p.grad for p in trainable), "gradients")
    optimizer.step()
    tracker.mark(_optimizer_tensors(optimizer), "optimizer_state")
    tracker.mark((p.grad for p in trainable), "gradients")


def _autocast(torch: Any, settings: Settings, device_type: str) -> Any:
    amp = settings.precision.amp
    if amp is None:
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def make_optimizer(torch: Any, parameters: list[Any], name: str) -> Any:
    """torch's optimizers as a training script makes them, foreach as on CUDA (fused for adamw-fused)."""
    optim = torch.optim
    makers = {
        "adamw": lambda: optim.AdamW(parameters, lr=1e-5, foreach=True),
        "adamw-fused": lambda: optim.AdamW(parameters, lr=1e-5, fused=True),
        "adam": lambda: optim.Adam(parameters, lr=1e-5, foreach=True),
        "sgd": lambda: optim.SGD(parameters, lr=1e-5, foreach=True),
        "sgd-momentum": lambda: optim.SGD(parameters, lr=1e-5, momentum=0.9, foreach=True),
        "adafactor": lambda: optim.Adafactor(parameters, lr=1e-2, foreach=True),
    }
    if name not in makers:
        raise Untraceable(f"optimizer {name}: not a torch optimizer; {_MEASURE}")
    from torch.distributed.tensor import DTensor

    split = [[p for p in parameters if isinstance(p, DTensor)], [p for p in parameters if not isinstance(p, DTensor)]]
    if all(split):   # tensor parallelism: foreach cannot mix DTensor and plain tensors in one call
        return _Optimizers([make_optimizer(torch, group, name) for group in split])
    return makers[name]()


class _Optimizers:
    """Two optimizers stepped one after the other (the DTensor and the replicated plain parameters of a
    tensor-parallel model); their foreach temporaries do not coexist, as they would in one call."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    @property
    def state(self) -> dict[Any, Any]:
        return {key: value for part in self.parts for key, value in part.state.items()}

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)


def _optimizer_tensors(optimizer: Any) -> list[Any]:
    return [value for state in optimizer.state.values() for value in state.values()
            if hasattr(value, "untyped_storage")]
