"""Done-when check 1: the training estimate against what PyTorch really allocates in one training step.

Tiny models of real shapes (Llama, Qwen2, GPT-2 built from config with transformers on the CPU, a few MB of
real tensors) run one full step: forward, loss, backward, optimizer step. Live tensors are counted with a
TorchDispatchMode that registers every storage an operator returns, counts each storage once rounded up to
512 bytes (the CUDA caching allocator's kMinBlockSize), and drops it when its storage is freed (a weak
reference per storage); the step's high-water mark is compared with the estimate's `peak.allocated`.

The step measured is the second one (steady state: the optimizer states exist), as the estimate assumes.
What differs between this CPU step and a CUDA one, and how the comparison handles it:
- AdamW/SGD must be asked for `foreach=True`: PyTorch only defaults to it on CUDA, which is what we model.
- Non-fused Adam keeps its 0-dim `step` counters on the CPU even when training on a GPU
  (torch/optim/adam.py, capturable=False), so they are left out of the count.
- The cuBLAS workspace is a CUDA allocation (memory/overhead.py); it is subtracted from the estimate.
- sdpa on the CPU runs _scaled_dot_product_flash_attention_for_cpu, which saves the same tensors (q, k, v,
  output, log-sum-exp) as the CUDA flash and memory-efficient kernels.

Slow on purpose: each case runs two real training steps under a per-operator tracker, about 5 s of CPU per
case (about 80 s for the module); these are the issue's done-when check.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vramfit import estimate
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import LoRA, Settings

TOLERANCE = 0.03
BATCH, SEQ = 2, 128

LLAMA: dict[str, Any] = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
                         "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 512,
                         "tie_word_embeddings": False}
QWEN2: dict[str, Any] = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 192,
                         "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 6,
                         "num_key_value_heads": 2, "vocab_size": 3000, "max_position_embeddings": 512,
                         "tie_word_embeddings": True}
GPT2: dict[str, Any] = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 256, "n_layer": 3,
                        "n_head": 4, "vocab_size": 2000, "n_positions": 256, "resid_pdrop": 0.0,
                        "embd_pdrop": 0.0, "attn_pdrop": 0.0}


class LiveStorages(TorchDispatchMode):
    """High-water mark of live storages: each once, rounded up to 512 bytes, gone when garbage collected."""

    def __init__(self, skip: set[int]) -> None:
        super().__init__()
        self.live: dict[int, tuple[Any, int]] = {}
        self.skip = skip
        self.peak = 0

    def add(self, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.skip:
            return
        known = self.live.get(key)
        if known is None or known[0].expired():
            self.live[key] = (StorageWeakRef(storage), -(-storage.nbytes() // 512) * 512)

    def current(self) -> int:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        return sum(size for _, size in self.live.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            self.add(tensor)
        self.peak = max(self.peak, self.current())
        return out


def _optimizer(name: str, params: list[Any]) -> Any:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, foreach=True)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True)
    if name == "adafactor":
        return transformers.optimization.Adafactor(params, lr=1e-3, scale_parameter=False, relative_step=False,
                                                   warmup_init=False)
    raise AssertionError(name)


def _model(config: dict[str, Any], finetune: str, targets: tuple[str, ...], grad_ckpt: bool) -> Any:
    torch.manual_seed(0)
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **fields)
    hf_config._attn_implementation = "sdpa"
    model = getattr(transformers, config["architectures"][0])(hf_config)
    if grad_ckpt:
        model.gradient_checkpointing_enable()
    if finetune == "lora":
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=_peft_targets(targets)))
    return model.train()


def _peft_targets(targets: tuple[str, ...]) -> Any:
    return "all-linear" if targets == ("all-linear",) else list(targets)  # PEFT wants the bare string


def measure(config: dict[str, Any], *, optimizer: str, finetune: str = "full", targets: tuple[str, ...] = (),
            grad_ckpt: bool = False, amp: bool = False) -> int:
    """Peak live bytes of the second training step of the tiny model (under bf16 autocast when `amp`)."""
    model = _model(config, finetune, targets, grad_ckpt)
    opt = _optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, config["vocab_size"], (BATCH, SEQ))
    labels = ids.clone()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    counters = {v.untyped_storage().data_ptr() for s in opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() == 0}
    with LiveStorages(skip=counters) as tracker:
        for tensor in [*model.parameters(), ids, labels,
                       *(v for s in opt.state.values() for v in s.values())]:
            tracker.add(tensor)
        step()
    return tracker.peak


def predict(config: dict[str, Any], **changes: Any) -> int:
    model = Model(name=config["model_type"], architecture=read_architecture(config), source="config",
                  config=copy.deepcopy(config))
    settings = Settings().replace(mode="training", dtype="fp32", batch_size=BATCH, seq_len=SEQ, **changes)
    result = estimate(model, settings)
    return result.peak.allocated - result.memory["workspace"]


def _check(measured: int, predicted: int) -> None:
    error = (predicted - measured) / measured
    assert abs(error) <= TOLERANCE, f"estimate {predicted:,} vs traced {measured:,} ({error:+.2%})"


@pytest.mark.parametrize("optimizer", ["adamw", "sgd-momentum", "adafactor", "sgd"])
def test_llama_full_finetuning_by_optimizer(optimizer: str) -> None:
    _check(measure(LLAMA, optimizer=optimizer), predict(LLAMA, optimizer=optimizer))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_llama_full_finetuning_with_gradient_checkpointing(optimizer: str) -> None:
    _check(measure(LLAMA, optimizer=optimizer, grad_ckpt=True),
           predict(LLAMA, optimizer=optimizer, grad_ckpt="full"))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_llama_mixed_precision_bf16_autocast(optimizer: str) -> None:
    """fp32 parameters under torch.autocast(bfloat16): autocast's weight copies, bf16 linear inputs, an fp32
    residual stream (CPU autocast casts the same ops as CUDA's for these layers: linear and sdpa)."""
    _check(measure(LLAMA, optimizer=optimizer, amp=True), predict(LLAMA, optimizer=optimizer, amp="bf16"))


@pytest.mark.parametrize("grad_ckpt", [False, True])
def test_llama_lora(grad_ckpt: bool) -> None:
    targets = ("q_proj", "v_proj")
    _check(measure(LLAMA, optimizer="adamw", finetune="lora", targets=targets, grad_ckpt=grad_ckpt),
           predict(LLAMA, optimizer="adamw", finetune="lora", lora=LoRA(targets=targets),
                   grad_ckpt="full" if grad_ckpt else "none"))


def test_llama_lora_all_linear_with_sgd() -> None:
    _check(measure(LLAMA, optimizer="sgd", finetune="lora", targets=("all-linear",)),
           predict(LLAMA, optimizer="sgd", finetune="lora", lora=LoRA(targets=("all-linear",))))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_qwen2_tied_embeddings_and_biases(optimizer: str) -> None:
    _check(measure(QWEN2, optimizer=optimizer), predict(QWEN2, optimizer=optimizer))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_gpt2_layernorm_and_learned_positions(optimizer: str) -> None:
    _check(measure(GPT2, optimizer=optimizer), predict(GPT2, optimizer=optimizer))
