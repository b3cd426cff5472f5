"""What the user asks about, as small frozen dataclasses with meaningful names and units.

`Settings` bundles them; `Settings.replace(...)` makes a variant (searches use it). Validation of each field
lives in `validate()` of the dataclass that owns it, so the CLI, the Python API and the HTTP API report the
same error for the same mistake.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vramfit.errors import InvalidSetting
from vramfit.held import put

Mode = Literal["inference", "training"]
DType = Literal["auto", "fp32", "fp16", "bf16"]
AttentionImpl = Literal["eager", "sdpa", "flash"]
Finetune = Literal["full", "lora", "qlora", "dora"]
GradCkpt = Literal["none", "full", "selective"]
Offload = Literal["none", "optimizer", "params"]

DTYPES = ("fp32", "fp16", "bf16")
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
# Quantized formats vramfit knows; `memory.weights` holds each one's definition and source.
KV_DTYPES = ("auto", "fp32", "fp16", "bf16", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4")
OPTIMIZERS = ("adamw", "adamw-fused", "adam", "sgd", "sgd-momentum", "adafactor", "lion", "adamw-8bit",
              "paged-adamw-8bit", "paged-adamw")
RUNTIMES = ("transformers", "vllm", "sglang", "llama.cpp", "litgpt")
FRAMEWORKS = ("transformers", "torchtune", "litgpt")
# --quant values QLoRA takes: bitsandbytes NF4, plain or with double quantization (bnb_4bit_use_double_quant).
QLORA_QUANTS = ("bnb-nf4", "bnb-nf4-dq")


# Counts (batch, tokens, ranks, ...) above this are refused: beyond 10^9 tokens, the range over which
# tests/test_properties.py checks that the integer arithmetic is exact, a count is a typo, not a workload.
MAX_COUNT = 10**9


def _positive(name: str, value: int, *, fix: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidSetting(f"{name}: must be a positive integer, got {value!r}; {fix}")
    if value > MAX_COUNT:
        raise InvalidSetting(f"{name}: {value:,} is more than {MAX_COUNT:,}, beyond any real workload; {fix}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidSetting(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    """How much work one step does.

    seq_len: tokens per sequence (inference: prompt plus generated tokens; training: sequence length).
    new_tokens: of those, how many are generated (inference); 0 means a prefill-only forward pass.
    batch_size: sequences per GPU per step (training: the micro-batch).
    """

    mode: Mode = "inference"
    batch_size: int = 1
    seq_len: int = 2048
    new_tokens: int = 0
    grad_accum: int = 1
    num_beams: int = 1
    num_return_sequences: int = 1
    prefill_chunk: int | None = None  # chunked prefill: tokens per forward pass (vLLM, SGLang)

    def validate(self) -> None:
        _choice("mode", self.mode, ("inference", "training"))
        _positive("batch_size", self.batch_size, fix="pass --batch-size 1 or more")
        _positive("seq_len", self.seq_len, fix="pass --seq-len 1 or more (prompt plus generated tokens)")
        _positive("grad_accum", self.grad_accum, fix="pass --grad-accum 1 or more")
        _positive("num_beams", self.num_beams, fix="pass --num-beams 1 or more")
        _positive("num_return_sequences", self.num_return_sequences, fix="pass --num-return-sequences 1 or more")
        if self.new_tokens < 0 or (self.new_tokens and self.new_tokens >= self.seq_len):
            raise InvalidSetting(f"new_tokens: {self.new_tokens} must be at least 0 and less than seq_len "
                                 f"({self.seq_len}), since seq_len counts prompt plus generated tokens; raise "
                                 "--seq-len or lower --new-tokens")
        if self.num_return_sequences > self.num_beams and self.num_beams > 1:
            raise InvalidSetting("num_return_sequences: cannot exceed num_beams with beam search; lower it")
        if self.prefill_chunk is not None:
            _positive("prefill_chunk", self.prefill_chunk, fix="pass --prefill-chunk 1 or more, or leave it out")

    @property
    def prompt_len(self) -> int:
        return self.seq_len - self.new_tokens


@dataclass(frozen=True, kw_only=True, slots=True)
class Precision:
    """Number formats.

    dtype: the weights' (and, without amp, the compute) dtype; "auto" takes the model's own, as transformers'
    dtype="auto" does (config.json's dtype, else the stored safetensors dtype, else bf16). amp: automatic mixed precision, with fp32
    master weights and low-precision compute. quant: a weight quantization format name (see
    `vramfit.memory.weights.FORMATS`), or None. kv_dtype: the KV cache ("auto" follows the compute dtype).
    """

    dtype: DType = "auto"
    amp: Literal["bf16", "fp16"] | None = None
    quant: str | None = None
    kv_dtype: str = "auto"

    def validate(self) -> None:
        _choice("dtype", self.dtype, ("auto",) + DTYPES)
        if self.amp is not None:
            _choice("amp", self.amp, ("bf16", "fp16"))
        _choice("kv_dtype", self.kv_dtype, KV_DTYPES)

    @property
    def compute_dtype(self) -> str:
        return self.amp or self.dtype


@dataclass(frozen=True, kw_only=True, slots=True)
class LoRA:
    """PEFT LoRA: rank r, alpha, dropout, and target modules by PEFT's names (or 'all-linear')."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def validate(self) -> None:
        _positive("lora_rank", self.rank, fix="pass --lora-rank 1 or more, e.g. 16")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidSetting(f"lora_dropout: {self.dropout} must be in [0, 1); pass e.g. 0.05")
        if not self.targets:
            raise InvalidSetting("lora_targets: empty; pass module names such as q_proj,v_proj or all-linear")


@dataclass(frozen=True, kw_only=True, slots=True)
class Training:
    """What a training step runs: fine-tuning method, optimizer, checkpointing, framework."""

    finetune: Finetune = "full"
    lora: LoRA = field(default_factory=LoRA)
    optimizer: str = "adamw"
    grad_ckpt: GradCkpt = "none"
    activation_offload: bool = False
    frozen_layers: int = 0
    dropout: float | None = None   # None: as config.json says
    framework: str = "transformers"
    bitsandbytes: str = "latest"   # the bitsandbytes release QLoRA runs on: "latest" or a version, e.g. 0.42.0
    peft: str = "latest"   # the PEFT release LoRA runs on (transformers framework): before 0.12.0 adapters take the
                           # base weight's dtype (PEFT_ADAPTER_FP32)
    # Full checkpointing's torch.utils.checkpoint mode: True is transformers' default (gradient_checkpointing_enable
    # passes use_reentrant=True); False: gradient_checkpointing_kwargs={"use_reentrant": False}, or a model whose
    # own code asks for it (GLM-4's remote modeling_chatglm.py GLMTransformer.forward calls
    # torch.utils.checkpoint.checkpoint(..., use_reentrant=False) itself). It decides what bitsandbytes < 0.43.2
    # keeps (memory/lora.py checkpointed_4bit_inputs).
    use_reentrant: bool = True

    def validate(self) -> None:
        _choice("finetune", self.finetune, ("full", "lora", "qlora", "dora"))
        bitsandbytes_version(self.bitsandbytes)
        peft_version(self.peft)
        if not self.use_reentrant and self.grad_ckpt != "full":
            raise InvalidSetting(f"use_reentrant: false applies to full checkpointing, not grad_ckpt "
                                 f"{self.grad_ckpt!r}; pass --grad-ckpt full or drop --non-reentrant")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("grad_ckpt", self.grad_ckpt, ("none", "full", "selective"))
        _choice("framework", self.framework, FRAMEWORKS)
        if self.frozen_layers < 0:
            raise InvalidSetting(f"frozen_layers: {self.frozen_layers} must be 0 or more; pass --frozen-layers 0")
        if self.finetune != "full":
            self.lora.validate()

    @property
    def bnb_saves_4bit_input(self) -> bool:
        """bitsandbytes before 0.43.2 kept each 4-bit linear's input on the autograd context (see
        BNB_4BIT_INPUT_FREED)."""
        version = bitsandbytes_version(self.bitsandbytes)
        return version is not None and version < BNB_4BIT_INPUT_FREED


# bitsandbytes/autograd/_functions.py MatMul4Bit.forward kept `ctx.tensors = (A, B)` whenever an input needs grad,
# so every 4-bit linear held its input although backward only reads B; commit 9e753741 (#1270, 2024-07-16,
# "fix QLoRA mem bug: delete useless buffered activation") made it `(None, B)`, first released in 0.43.2.
BNB_4BIT_INPUT_FREED = (0, 43, 2)
# A release as pip shows it: a pre-release counts as its release, a local tag (+cu121) is ignored.
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.?(?:post|dev|rc|a|b)\d*)?(?:\+[\w.]+)?")


def bitsandbytes_version(text: str) -> tuple[int, int, int] | None:
    """'0.42.0' -> (0, 42, 0); 'latest' -> None (the current release). A pre-release counts as its release."""
    return _release("bitsandbytes", text, example="0.42.0")


def peft_version(text: str) -> tuple[int, int, int] | None:
    """'0.10.0' -> (0, 10, 0); 'latest' -> None (the current release)."""
    return _release("peft", text, example="0.10.0")


# PEFT 0.12.0 added get_peft_model(autocast_adapter_dtype=True), which upcasts bf16/fp16 adapters to fp32
# (peft 0.12.0 tuners/tuners_utils.py _cast_adapter_dtype); before it LoraLayer.update_layer moved a new adapter to
# the base layer's weight dtype when that dtype is floating point, else kept it fp32 (peft 0.11.0
# tuners/lora/layer.py: `if weight.dtype.is_floating_point ...: self.to(weight.device, dtype=weight.dtype)`).
# A 4-bit base stores its packed data in bnb_4bit_quant_storage: uint8 by default (adapters stay fp32), the compute
# dtype where FSDP or ZeRO-3 shard it (adapters in that dtype).
PEFT_ADAPTER_FP32 = (0, 12, 0)


def torch_version(text: str) -> tuple[int, int, int] | None:
    """'1.10.1' or '2.1.0+cu121' -> its release; 'latest' -> None (the current release)."""
    return _release("torch", text, example="1.10.1")


def _release(package: str, text: str, *, example: str) -> tuple[int, int, int] | None:
    if text == "latest":
        return None
    match = _VERSION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidSetting(f"{package}: {text!r} is not a {package} version; pass --{package} with the installed "
                             f"release (pip show {package}), e.g. {example}, or latest")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


# What older torch releases allocate that the current one does not (Runtime.torch):
# - CUDA modules load lazily from 1.13 (pytorch/pytorch PR #86509 sets CUDA_MODULE_LOADING=LAZY; CUDA >= 11.7):
#   before it the context holds every kernel (memory/overhead.py CUDA_CONTEXT_EAGER_BYTES).
TORCH_LAZY_MODULES = (1, 13, 0)
# - softmax and log_softmax saved their input for backward as well as their output until pytorch/pytorch
#   PR #65242 ("Avoid saving self for softmax and log_softmax", issue #64000): derivatives.yaml's
#   `_softmax_backward_data(grad, result, dim, self)` became `..., self.scalar_type())`.
TORCH_SOFTMAX_INPUT_FREED = (1, 11, 0)
# - Optimizer.zero_grad() and Module.zero_grad() zeroed the gradients in place (set_to_none=False) until 2.0
#   made set_to_none=True the default (pytorch/pytorch PR #92731; 2.0 release notes): the gradients then stay
#   allocated from one step into the next, as under gradient accumulation.
TORCH_ZERO_GRAD_TO_NONE = (2, 0, 0)
# - torch.optim's Adam and AdamW ran one parameter at a time unless foreach=True was passed until 2.0 picked the
#   foreach (multi-tensor) path by default on CUDA (torch/optim/optimizer.py _default_to_fused_or_foreach, new in
#   2.0): the step's temporaries are then those of the largest parameter, not of all of them (memory/optimizer.py).
TORCH_FOREACH_DEFAULT = (2, 0, 0)
# DeepSpeed's reduce_bucket_size when a config does not set it (deepspeed v0.14.0 runtime/zero/config.py 105), in elements
DEEPSPEED_REDUCE_BUCKET = 500_000_000
# DeepSpeed ZeRO-3's stage3_max_live_parameters and stage3_param_persistence_threshold when a config does not set them,
# in elements (deepspeed v0.14.0 runtime/zero/config.py 217 and 200; v0.13.4 the same lines, v0.19.8 lines 245 and
# 228, same values). accelerate 0.28 without a DeepSpeed config file writes neither key (utils/dataclasses.py 785-806),
# and the HF Trainer / accelerate fill only keys set to "auto" (transformers 4.39 integrations/deepspeed.py 205-245:
# persistence "auto" = 10 x hidden; max_live has no "auto"). memory/training.py _deepspeed_gathered_bytes.
DEEPSPEED_MAX_LIVE_PARAMETERS = 1_000_000_000
DEEPSPEED_PERSISTENCE_THRESHOLD = 100_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Parallelism:
    """How the work is split over GPUs. gpus = data x tensor x pipeline x context (expert parallelism
    splits the experts over the data-parallel ranks and needs no GPUs of its own)."""

    gpus: int = 1
    tensor: int = 1
    pipeline: int = 1
    context: int = 1
    expert: int = 1
    zero_stage: int = 0
    fsdp: Literal["none", "full", "shard-grad-op", "hybrid"] = "none"
    offload: Offload = "none"
    offload_target: Literal["cpu", "nvme"] = "cpu"
    # DeepSpeed ZeRO's reduce_bucket_size in elements (its default, runtime/zero/config.py: 5e8), or "auto": hidden x
    # hidden, as the HF Trainer and accelerate fill a DeepSpeed config's "auto" value (memory/training.py
    # _reduce_buckets)
    zero_bucket: int | Literal["auto"] = DEEPSPEED_REDUCE_BUCKET
    # DeepSpeed ZeRO-3's stage3_max_live_parameters in elements: how many unsharded parameter elements its prefetcher
    # keeps gathered (memory/training.py _deepspeed_gathered_bytes)
    zero_live: int = DEEPSPEED_MAX_LIVE_PARAMETERS

    def validate(self) -> None:
        _positive("zero_live", self.zero_live, fix="pass --zero-live ELEMENTS (DeepSpeed's default "
                  f"stage3_max_live_parameters: {DEEPSPEED_MAX_LIVE_PARAMETERS})")
        if self.zero_bucket != "auto":
            _positive("zero_bucket", self.zero_bucket, fix="pass --zero-bucket ELEMENTS (DeepSpeed's default "
                      f"reduce_bucket_size: {DEEPSPEED_REDUCE_BUCKET}) or auto (hidden x hidden)")
        for name in ("gpus", "tensor", "pipeline", "context", "expert"):
            _positive(name, getattr(self, name), fix=f"pass --{name if name != 'gpus' else 'gpus'} 1 or more")
        if self.gpus % (self.tensor * self.pipeline * self.context):
            raise InvalidSetting(f"gpus: {self.gpus} GPUs cannot be split into tensor {self.tensor} x pipeline "
                                 f"{self.pipeline} x context {self.context}; make --gpus a multiple of their "
                                 "product")
        if self.zero_stage not in (0, 1, 2, 3):
            raise InvalidSetting(f"zero_stage: {self.zero_stage} is not a ZeRO stage; choose 0, 1, 2 or 3")
        _choice("offload", self.offload, ("none", "optimizer", "params"))

    @property
    def data(self) -> int:
        return self.gpus // (self.tensor * self.pipeline * self.context)


@dataclass(frozen=True, kw_only=True, slots=True)
class Runtime:
    """The software that runs the step and how it is configured.

    name: inference runtime (transformers, vllm, sglang, llama.cpp). attention: eager, sdpa or flash.
    gpu_memory_utilization, block_size: vLLM's pre-allocation. n_gpu_layers: llama.cpp offload (None: all).
    torch: the PyTorch release the step runs on, "latest" or a version such as 1.10.1: older releases allocate
    more (see TORCH_LAZY_MODULES, TORCH_SOFTMAX_INPUT_FREED, TORCH_ZERO_GRAD_TO_NONE, TORCH_FOREACH_DEFAULT).
    """

    name: str = "transformers"
    attention: AttentionImpl = "sdpa"
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    n_gpu_layers: int | None = None
    max_num_seqs: int | None = None
    draft_model: str | None = None
    cuda_graphs: bool = True
    torch: str = "latest"

    def validate(self) -> None:
        _choice("runtime", self.name, RUNTIMES)
        torch_version(self.torch)
        _choice("attention", self.attention, ("eager", "sdpa", "flash"))
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidSetting(f"gpu_memory_utilization: {self.gpu_memory_utilization} must be in (0, 1]; "
                                 "pass a fraction such as 0.9 (vLLM's default)")
        _positive("block_size", self.block_size, fix="pass --block-size 16 (vLLM's default)")
        if self.n_gpu_layers is not None and self.n_gpu_layers < 0:
            raise InvalidSetting(f"n_gpu_layers: {self.n_gpu_layers} must be 0 or more; leave --n-gpu-layers out for all")
        if self.max_num_seqs is not None:
            _positive("max_num_seqs", self.max_num_seqs, fix="pass --max-num-seqs 1 or more (vLLM's default: 256)")

    def torch_before(self, release: tuple[int, int, int]) -> bool:
        """Whether the step's torch is older than `release` ("latest" is never older)."""
        version = torch_version(self.torch)
        return version is not None and version < release


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything an estimate depends on besides the model. `gpu` names a GPU from the catalog (or None);
    `gpu_memory` overrides its capacity in bytes."""

    workload: Workload = field(default_factory=Workload)
    precision: Precision = field(default_factory=Precision)
    training: Training = field(default_factory=Training)
    parallelism: Parallelism = field(default_factory=Parallelism)
    runtime: Runtime = field(default_factory=Runtime)
    gpu: str | None = None
    gpu_memory: int | None = None

    def validate(self) -> Settings:
        _check_types(self, "")
        for part in (self.workload, self.precision, self.parallelism, self.runtime):
            _validated(part)
        if self.gpu_memory is not None and not 0 < self.gpu_memory <= MAX_GPU_MEMORY_BYTES:
            raise InvalidSetting(f"gpu_memory: {self.gpu_memory!r} bytes is not a GPU capacity; pass --gpu-memory "
                                 "as a size such as 24GiB or 80GB (at most 1 PiB)")
        if self.workload.mode == "training":
            _validated(self.training)
        _consistent(self)
        return self

    @property
    def mode(self) -> Mode:
        return self.workload.mode

    def replace(self, **changes: Any) -> Settings:
        """Settings with fields of its parts changed, e.g. replace(batch_size=8, tensor=2). Parts that no
        change touches are the same objects, so their validation is not repeated (see _validated)."""
        if not changes:
            return self
        parts: dict[str, dict[str, Any]] = {}
        own: dict[str, Any] = {}
        for key, value in changes.items():
            owner = _FIELD_OWNER.get(key)
            if owner is None:
                if key not in _OWN_FIELDS:
                    raise InvalidSetting(f"{key}: not a setting; known settings are {', '.join(sorted(_FIELD_OWNER))}")
                own[key] = value
            else:
                parts.setdefault(owner, {})[key] = value
        for owner, values in parts.items():
            own[owner] = dataclasses.replace(getattr(self, owner), **values)
        return dataclasses.replace(self, **own)

    def points(self, axes: Mapping[str, Iterable[Any]]) -> Iterator[Settings]:
        """Validated Settings at every combination of the axes' values (itertools.product in the axes' order,
        the last varying fastest), every other field as here: what a batch x length table or a plot estimates.
        The first point is made and validated as replace(...).validate() makes it. When every axis is one of
        the Workload's counts (_SWEPT_COUNTS), the later points check only what they change: each value's type
        once, then each new Workload's validate() and the rules that read it (_consistent); the other parts
        are the first point's objects, already validated."""
        names = tuple(axes)
        values = [_axis_values(name, axis) for name, axis in axes.items()]
        combos = itertools.product(*values)

        def validated(combo: tuple[Any, ...]) -> Settings:
            return self.replace(**dict(zip(names, combo))).validate()

        first = next(combos, None)
        if first is None:   # an axis without values: no points
            return
        start = validated(first)
        yield start
        if not _SWEPT_COUNTS.issuperset(names):
            yield from map(validated, combos)
            return
        checkers = {name: (has_type, hint) for name, has_type, hint, _ in _checkers(Workload)}
        for name, axis in zip(names, values):
            has_type, hint = checkers[name]
            for value in axis:
                if not has_type(value):
                    raise _wrong_type(name, value, hint)
        fixed = {name: getattr(start.workload, name) for name in checkers}
        parts = {f.name: getattr(start, f.name) for f in dataclasses.fields(Settings)}
        for combo in combos:
            fixed.update(zip(names, combo))
            workload = Workload(**fixed)
            workload.validate()
            parts["workload"] = workload
            point = Settings(**parts)
            _consistent(point)
            yield point

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MAX_GPU_MEMORY_BYTES = 2**50  # 1 PiB: a bound on typos, far above any GPU


def _check_types(value: Any, where: str) -> None:
    """Each field holds the type its annotation names, before any rule compares or multiplies it: the Python
    API takes any object, and "8" < 1 would be a TypeError, True a batch of one, NaN a silent wrong number.
    A settings part is checked field by field in turn; an object that passed once is not checked again."""
    if _TYPED.get(id(value), (None,))[0] is value:
        return
    for name, has_type, hint, nested in _checkers(type(value)):
        field_value = getattr(value, name)
        if not has_type(field_value):
            raise _wrong_type(_FIELD_NAMES.get(f"{where}{name}", name), field_value, hint)
        if nested and _TYPED.get(id(field_value), (None,))[0] is not field_value:   # a part not yet checked
            _check_types(field_value, f"{where}{name}.")
    _remember(_TYPED, value)


def _wrong_type(name: str, value: Any, hint: Any) -> InvalidSetting:
    return InvalidSetting(f"{name}: got {value!r}; pass {_type_name(hint)}")


def _axis_values(name: str, axis: Iterable[Any]) -> tuple[Any, ...]:
    """A sweep axis's values as a tuple; a single value or a string is refused (a string is iterable, and
    seq_len="2048" would sweep four one-character values)."""
    if isinstance(axis, (str, bytes)) or not isinstance(axis, Iterable):
        raise InvalidSetting(f"{name}: a sweep axis takes a list of values, got {axis!r}; pass e.g. {name}=[1, 2, 4]")
    return tuple(axis)


def _validated(part: Any) -> None:
    """part.validate(), once per object: a settings part is frozen, so an object that passed stays valid, and
    Settings.replace keeps the parts it does not change. A sweep over batch and length re-validates only the
    new Workload."""
    if _VALID.get(id(part), (None,))[0] is not part:
        part.validate()
        _remember(_VALID, part)


# id(object) -> (object,): objects that passed the type check / their validate(). Each entry holds its object,
# so the id cannot be reused while the entry lives. Beyond _PASSED_SIZE entries the cache starts afresh (a
# sweep adds two per point; dropping the oldest one at a time costs more, as a dict's iteration then skips
# the removed entries at its front), and an object seen again is simply checked again.
_TYPED: dict[int, tuple[Any]] = {}
_VALID: dict[int, tuple[Any]] = {}
_PASSED_SIZE = 4096


def _remember(cache: dict[int, tuple[Any]], value: Any) -> None:
    put(cache, id(value), (value,), _PASSED_SIZE)


def _checkers(cls: type) -> tuple[tuple[str, Callable[[Any], bool], Any, bool], ...]:
    """(field name, type test, annotation, whether it is a settings part of its own) for each field of a
    settings class, built once per class: the annotations are resolved (typing.get_type_hints evaluates every
    string annotation) and each turned into a test that no longer asks typing what the annotation is."""
    if cls not in _CHECKERS:
        hints = typing.get_type_hints(cls)
        _CHECKERS[cls] = tuple((f.name, _type_test(hint), hint, dataclasses.is_dataclass(hint))
                               for f in dataclasses.fields(cls) for hint in (hints[f.name],))
    return _CHECKERS[cls]


_CHECKERS: dict[type, tuple[tuple[str, Callable[[Any], bool], Any, bool], ...]] = {}


def _type_test(hint: Any) -> Callable[[Any], bool]:
    """A test that `value` has the type `hint` names: a Literal's values (not bools), a union's members, a
    tuple's items, None, a finite number for float, an int that is not a bool, else an isinstance check."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return lambda value: isinstance(value, (str, int)) and not isinstance(value, bool) and value in args
    if origin in (typing.Union, types.UnionType):
        members = tuple(_type_test(arg) for arg in args if arg is not type(None))
        if len(members) == 1 and len(args) == 2:   # X | None, most optional fields: no generator per test
            only = members[0]
            return lambda value: value is None or only(value)
        tests = tuple(_type_test(arg) for arg in args)
        return lambda value: any(test(value) for test in tests)
    if origin is tuple:
        item = _type_test(args[0])
        return lambda value: isinstance(value, tuple) and all(item(v) for v in value)
    if hint is type(None):
        return lambda value: value is None
    if hint is float:
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return lambda value: isinstance(value, hint)
    return lambda value: True


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is tuple:
        return "a list of strings"
    return {int: "a whole number", float: "a finite number", str: "a string", bool: "true or false",
            type(None): "nothing (null)"}.get(hint, str(hint))


# Nested field paths by the name the rest of vramfit (and the CLI's errors) calls them.
_FIELD_NAMES = {"training.lora.rank": "lora_rank", "training.lora.alpha": "lora_alpha",
                "training.lora.dropout": "lora_dropout", "training.lora.targets": "lora_targets",
                "runtime.name": "runtime"}


def _consistent(s: Settings) -> None:
    """Flags that are each valid but contradict each other, or that the chosen mode would silently ignore."""
    mode, quant = s.workload.mode, s.precision.quant
    if mode == "inference" and s.precision.amp is not None:
        raise InvalidSetting("amp: automatic mixed precision is a training setting; in inference pass --dtype "
                             "for the weights and compute dtype and drop --amp")
    if mode == "training" and quant and s.training.finetune != "qlora":
        raise InvalidSetting(f"quant: training models a quantized base only as QLoRA (bitsandbytes NF4); pass "
                             f"--finetune qlora, or drop --quant {quant}")
    if mode == "training" and quant and quant not in QLORA_QUANTS:
        raise InvalidSetting(f"quant: QLoRA quantizes the base with bitsandbytes NF4, not {quant}; pass "
                             "--quant bnb-nf4 (or bnb-nf4-dq for double quantization) or drop --quant")
    if (mode == "training" and s.training.finetune == "qlora" and s.training.framework == "torchtune"
            and s.training.bnb_saves_4bit_input):
        raise InvalidSetting(f"bitsandbytes: torchtune's QLoRA quantizes with torchao NF4 (linear_nf4), not "
                             f"bitsandbytes, so --bitsandbytes {s.training.bitsandbytes} changes nothing; drop it")
    if mode == "training" and s.training.peft != "latest" and (s.training.finetune == "full"
                                                            or s.training.framework != "transformers"):
        why = ("full fine-tuning adds no adapters" if s.training.finetune == "full"
               else f"framework {s.training.framework} builds its own LoRA layers, not PEFT's")
        raise InvalidSetting(f"peft: {why}, so --peft {s.training.peft} changes nothing; drop it")
    if s.parallelism.zero_bucket != DEEPSPEED_REDUCE_BUCKET and (mode != "training" or s.parallelism.zero_stage == 0):
        raise InvalidSetting(f"zero_bucket: DeepSpeed's reduce bucket exists only with ZeRO in training, so "
                             f"--zero-bucket {s.parallelism.zero_bucket} changes nothing; pass --zero 1, 2 or 3, or drop it")
    if s.parallelism.zero_live != DEEPSPEED_MAX_LIVE_PARAMETERS and (mode != "training" or s.parallelism.zero_stage != 3):
        raise InvalidSetting(f"zero_live: DeepSpeed's stage3_max_live_parameters bounds only ZeRO-3's gathered "
                             f"parameters in training, so --zero-live {s.parallelism.zero_live} changes nothing; pass "
                             "--zero 3, or drop it")
    if s.parallelism.context > s.workload.seq_len:
        raise InvalidSetting(f"cp: {s.parallelism.context} context-parallel ranks exceed seq_len "
                             f"{s.workload.seq_len} tokens; lower --cp")
    if mode == "inference":
        _training_only_parallelism(s.parallelism)


def _training_only_parallelism(par: Parallelism) -> None:
    """Inference runs tensor and pipeline parallel (and replicas); the training-only shardings would be
    silently ignored, so they are refused."""
    if par.context > 1:
        raise InvalidSetting("cp: context parallelism is modelled for training; in inference pass --cp 1")
    if par.zero_stage or par.fsdp != "none" or par.offload != "none":
        raise InvalidSetting("zero_stage/fsdp/offload: ZeRO, FSDP and offload shard a training step; in "
                             "inference pass --zero 0 --fsdp none --offload none (split with --tp/--pp)")


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """The inverse of `Settings.to_dict` (missing keys take their defaults; lists become tuples). Unknown
    keys raise InvalidSetting naming the key and the known ones, so a typo never passes silently."""
    parts = {"workload": Workload, "precision": Precision, "training": Training, "parallelism": Parallelism,
             "runtime": Runtime}
    own: dict[str, Any] = {}
    for key, value in _known(data, _OWN_FIELDS, where="settings").items():
        own[key] = _part_from_dict(parts[key], value, where=key) if key in parts else value
    return Settings(**own)


def _part_from_dict(cls: Any, data: Any, *, where: str) -> Any:
    if not isinstance(data, dict):
        raise InvalidSetting(f"settings.{where}: expected an object of fields, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {key: tuple(v) if isinstance(v, list) else v for key, v in _known(data, names, where=where).items()}
    if cls is Training and "lora" in values:
        values["lora"] = _part_from_dict(LoRA, values["lora"], where="training.lora")
    return cls(**values)


def _known(data: dict[str, Any], names: set[str], *, where: str) -> dict[str, Any]:
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidSetting(f"settings.{where}: unknown key(s) {', '.join(unknown)}; known keys are "
                             f"{', '.join(sorted(names))}")
    return data


# The Workload's fields a sweep varies quickly (Settings.points): all but the mode. Validation reads them only in
# Workload.validate and, for seq_len, in _consistent; the mode also decides what else is validated.
_SWEPT_COUNTS = frozenset(f.name for f in dataclasses.fields(Workload)) - {"mode"}
_OWN_FIELDS = {"workload", "precision", "training", "parallelism", "runtime", "gpu", "gpu_memory"}
_FIELD_OWNER = {
    f.name: owner
    for owner, cls in (("workload", Workload), ("precision", Precision), ("training", Training),
                       ("parallelism", Parallelism), ("runtime", Runtime))
    for f in dataclasses.fields(cls)
}
