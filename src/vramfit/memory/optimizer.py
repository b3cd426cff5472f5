"""Optimizer states (alive between steps) and step temporaries (alive during `optimizer.step()` only).

Each optimizer is described by what its implementation allocates, tensor by tensor, read from the source:

- adamw, adam: torch/optim/adam.py `_multi_tensor_adam` (the foreach path PyTorch picks by default on CUDA).
  States exp_avg and exp_avg_sq are `torch.zeros_like(p)`: the parameter's dtype. The 0-dim `step` counters
  stay on the CPU unless capturable or fused. During the step `torch._foreach_sqrt(exp_avg_sqs)` allocates one
  temporary per parameter of that dtype group at once (all other updates are in place), so the step's peak is
  one extra copy of the trainable parameters. With weight_decay and non-decoupled Adam,
  `_foreach_add(grads, params)` makes one more copy, but it is deleted before the sqrt (`del device_grads`).
  Before torch 2.0 the default was the single-tensor loop (`foreach=None` meant False; 2.0's
  `_default_to_fused_or_foreach` picks foreach on CUDA): per parameter `(exp_avg_sq.sqrt() / bias_correction2_sqrt)`
  holds the square root and its quotient at once, so the temporaries are two copies of the largest parameter.
- adamw-fused: `fused=True`, torch/optim/adam.py `_fused_adam`: same states, the `step` counters on the GPU
  (one 4-byte tensor per parameter, rounded to 512), no temporaries: the kernel updates in place.
- sgd: no state, `_foreach_add_(params, grads)` in place. sgd-momentum: one momentum buffer per parameter
  (`grad.detach().clone()` on the first step, torch/optim/sgd.py), updated in place.
- adafactor: transformers/optimization.py `Adafactor` (beta1=None as the Trainer's optim="adafactor" sets it):
  a matrix keeps exp_avg_sq_row (rows) and exp_avg_sq_col (cols), a vector its full exp_avg_sq, all in the
  gradient dtype. The step loops over parameters; for one matrix it holds `update` and `-update` at once
  (`p_data_fp32.add_(-update)`), so the temporaries are two copies of the largest parameter.
- lion: lucidrains/lion-pytorch `update_fn`: one exp_avg per parameter; per parameter, `exp_avg.clone()
  .mul_().add()` makes two temporaries of that parameter's size.
- adamw-8bit, paged-adamw-8bit: bitsandbytes/optim/optimizer.py `Optimizer2State.init_state`: uint8 state1
  and state2 plus one fp32 absmax per block of 256 for each, for tensors of at least `min_8bit_size` = 4096
  elements; smaller tensors get two fp32 states. The paged variant allocates its states in CUDA unified
  memory (`get_state_buffer(..., paged)`), outside PyTorch's caching allocator: torch.cuda.max_memory_allocated
  never sees them, nvidia-smi does. paged-adamw (bitsandbytes PagedAdamW / PagedAdamW32bit, QLoRA's
  paged_adamw_32bit): the same two states in fp32, paged likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramfit.memory.gradients import allocation_bytes, tensors_bytes
from vramfit.memory.lora import ParamTensor

BNB_BLOCK = 256
BNB_MIN_8BIT_SIZE = 4096
STEP_COUNTER_BYTES = 4  # torch.zeros((), dtype=torch.float32) per parameter


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimizerMemory:
    """states: alive between steps in the caching allocator. paged: states in unified memory (device level).
    step_temporaries: extra bytes at the step's peak. formula/source: for --explain."""

    states: int
    paged: int
    step_temporaries: int
    formula: str
    temporaries_formula: str
    source: str


def optimizer_memory(name: str, trainable: Sequence[ParamTensor], param_bytes: int, *,
                     foreach: bool = True) -> OptimizerMemory:
    """States and step temporaries of optimizer `name` over the trainable tensors of `param_bytes` each.
    foreach=False: torch < 2.0's default single-tensor Adam/AdamW (settings.TORCH_FOREACH_DEFAULT)."""
    elements = [t.elements for t in trainable]
    largest = max(elements, default=0)
    copy = tensors_bytes(elements, param_bytes)
    if name in ("adamw", "adam") and not foreach:
        return OptimizerMemory(states=2 * copy, paged=0, step_temporaries=2 * allocation_bytes(largest * param_bytes),
                               formula="2 x sum round512(n_i x b) (exp_avg, exp_avg_sq)",
                               temporaries_formula="2 x largest parameter: exp_avg_sq.sqrt() and its quotient by "
                                                   "the bias correction, one parameter at a time",
                               source="torch/optim/_functional.py adam/adamw (torch <= 1.11), _single_tensor_adam(w) "
                                      "(1.12-1.13): denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)")
    if name in ("adamw", "adam"):
        return OptimizerMemory(states=2 * copy, paged=0, step_temporaries=copy,
                               formula="2 x sum round512(n_i x b) (exp_avg, exp_avg_sq)",
                               temporaries_formula="sum round512(n_i x b): _foreach_sqrt(exp_avg_sqs)",
                               source="torch/optim/adam.py _multi_tensor_adam")
    if name == "adamw-fused":
        counters = len(elements) * allocation_bytes(STEP_COUNTER_BYTES)
        return OptimizerMemory(states=2 * copy + counters, paged=0, step_temporaries=0,
                               formula="2 x sum round512(n_i x b) + tensors x 512 (step counters on the GPU)",
                               temporaries_formula="0: the fused kernel updates in place",
                               source="torch/optim/adam.py _fused_adam")
    if name == "sgd":
        return OptimizerMemory(states=0, paged=0, step_temporaries=0, formula="0: plain SGD keeps no state",
                               temporaries_formula="0", source="torch/optim/sgd.py _multi_tensor_sgd")
    if name == "sgd-momentum":
        return OptimizerMemory(states=copy, paged=0, step_temporaries=0,
                               formula="sum round512(n_i x b) (momentum_buffer)", temporaries_formula="0",
                               source="torch/optim/sgd.py _multi_tensor_sgd")
    if name == "adafactor":
        return _adafactor(trainable, param_bytes, largest)
    if name == "lion":
        return OptimizerMemory(states=copy, paged=0, step_temporaries=2 * allocation_bytes(largest * param_bytes),
                               formula="sum round512(n_i x b) (exp_avg)",
                               temporaries_formula="2 x largest parameter (clone, then add)",
                               source="lucidrains/lion-pytorch lion_pytorch.py update_fn")
    if name == "paged-adamw":
        return OptimizerMemory(states=0, paged=2 * tensors_bytes(elements, 4), step_temporaries=0,
                               formula="2 x sum round512(n_i x 4) in unified memory (state1, state2 fp32)",
                               temporaries_formula="0: the 32-bit kernel updates in place",
                               source="bitsandbytes/optim/adamw.py PagedAdamW (optim_bits=32, is_paged=True)")
    return _bnb_8bit(name, elements)


def _adafactor(trainable: Sequence[ParamTensor], param_bytes: int, largest: int) -> OptimizerMemory:
    """Factored second moments for matrices (rows + cols), a full one for vectors, in the grad dtype."""
    states = 0
    for tensor in trainable:
        if tensor.matrix and tensor.rows and tensor.cols:
            states += allocation_bytes(tensor.rows * param_bytes) + allocation_bytes(tensor.cols * param_bytes)
        else:
            states += allocation_bytes(tensor.elements * param_bytes)
    return OptimizerMemory(states=states, paged=0, step_temporaries=2 * allocation_bytes(largest * param_bytes),
                           formula="sum over matrices round512(rows x b) + round512(cols x b), "
                                   "vectors round512(n x b)",
                           temporaries_formula="2 x largest parameter (update and -update)",
                           source="transformers/optimization.py Adafactor.step")


def _bnb_8bit(name: str, elements: Sequence[int]) -> OptimizerMemory:
    states = 0
    for n in elements:
        if n < BNB_MIN_8BIT_SIZE:
            states += 2 * allocation_bytes(4 * n)
        else:
            blocks = -(-n // BNB_BLOCK)
            states += 2 * (allocation_bytes(n) + allocation_bytes(4 * blocks))
    paged = name == "paged-adamw-8bit"
    return OptimizerMemory(states=0 if paged else states, paged=states if paged else 0, step_temporaries=0,
                           formula="2 x (n_i uint8 + ceil(n_i/256) fp32 absmax); 2 x fp32 below 4096 elements",
                           temporaries_formula="0: the 8-bit kernels update in place",
                           source="bitsandbytes/optim/optimizer.py Optimizer2State.init_state")
