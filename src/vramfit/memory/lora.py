"""Which parameters a fine-tuning method trains, and what LoRA, DoRA and QLoRA add.

Every parameter tensor of the model is a `ParamTensor`: its element count, whether it is trained, and how its
base weight is stored. The rest of the training model (gradients, optimizer states, ZeRO/FSDP sharding) works
tensor by tensor on this list, because the allocator rounds every tensor up on its own.

- full: every parameter trains, except the blocks below `frozen_layers` (requires_grad=False).
- lora (PEFT, peft/tuners/lora/layer.py `Linear.update_layer`): the base model is frozen; each targeted
  `nn.Linear` gets lora_A (rank x in_features) and lora_B (out_features x rank), no biases.
- dora (PEFT `use_dora=True`, peft/tuners/lora/dora.py): LoRA plus a magnitude vector of out_features.
- qlora: LoRA over a base whose block linears are bitsandbytes 4-bit (NF4); embeddings, norms, biases and the
  output head stay in the compute dtype (transformers' bitsandbytes integration skips `lm_head`).

Target names are PEFT's `target_modules`: the module name of each Linear (`q_proj`, `c_attn`, ...), or
`all-linear`, which PEFT expands to every `nn.Linear` except the output layer (peft/tuners/tuners_utils.py,
`_maybe_include_all_linear_layers`). Routed experts are fused 3-D parameters in transformers 5, not
`nn.Linear` modules, so neither a name nor all-linear reaches them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vramfit.errors import InvalidSetting
from vramfit.memory.tensors import WeightTensor, weight_tensors
from vramfit.model.architecture import Architecture, Layer, Linear, MixtureOfExperts
from vramfit.settings import Training

ALL_LINEAR = "all-linear"


@dataclass(frozen=True, kw_only=True, slots=True)
class ParamTensor:
    """One parameter tensor. `layer` is its block index (None outside blocks). `quantized`: a 4-bit base
    weight (QLoRA). `adapter`: a LoRA/DoRA tensor that PEFT added. `rows` x `cols` is a matrix's shape (a 3-D fused expert
    tensor counts its experts into both), rows = 0 for vectors: Adafactor factors by it."""

    elements: int
    trainable: bool
    role: str = ""
    layer: int | None = None
    quantized: bool = False
    adapter: bool = False
    rows: int = 0
    cols: int = 0

    @property
    def matrix(self) -> bool:
        return self.rows > 0


def parameter_tensors(arch: Architecture, training: Training, *, held: Iterable[WeightTensor] | None = None,
                      blocks: range | None = None) -> tuple[ParamTensor, ...]:
    """The model's tensors under the fine-tuning method, base weights first, then adapters. `held`: the
    (sliced) tensors one GPU holds under tensor/pipeline parallelism, default all; `blocks`: its blocks."""
    base = _base_tensors(tuple(weight_tensors(arch) if held is None else held), training)
    if training.finetune == "full":
        return base
    adapters = (t for t in adapter_tensors(arch, training)
                if blocks is None or t.layer is None or t.layer in blocks)
    return base + tuple(adapters)


# (ids of the weight tensors, finetune, frozen_layers) -> (those tensors, their ParamTensors). An estimate
# asks twice and searches ask again and again for the same frozen tensors (rank_tensors and weight_tensors
# hand out the same objects); the key holds every Training field _base_tensor reads, and the entry holds the
# tensors, so their ids are not reused while it lives. The oldest entry goes first beyond _BASE_SIZE.
_BASE: dict[tuple[tuple[int, ...], str, int], tuple[tuple[WeightTensor, ...], tuple[ParamTensor, ...]]] = {}
_BASE_SIZE = 256


def _base_tensors(tensors: tuple[WeightTensor, ...], training: Training) -> tuple[ParamTensor, ...]:
    key = (tuple(map(id, tensors)), training.finetune, training.frozen_layers)
    hit = _BASE.get(key)
    if hit is None:
        hit = (tensors, tuple(_base_tensor(t, training) for t in tensors))
        if len(_BASE) >= _BASE_SIZE:
            _BASE.pop(next(iter(_BASE)), None)
        _BASE[key] = hit
    return hit[1]


def _base_tensor(tensor: WeightTensor, training: Training) -> ParamTensor:
    """Reads training.finetune and training.frozen_layers only (the _BASE key holds both)."""
    if training.finetune == "full":
        frozen = tensor.layer is not None and tensor.layer < training.frozen_layers
        rows, cols = _shape(tensor)
        return ParamTensor(elements=tensor.elements, trainable=not frozen, role=tensor.role, layer=tensor.layer,
                           rows=rows, cols=cols)
    quantized = training.finetune == "qlora" and tensor.layer is not None and tensor.matrix
    rows, cols = _shape(tensor)
    return ParamTensor(elements=tensor.elements, trainable=False, role=tensor.role, layer=tensor.layer,
                       quantized=quantized, rows=rows, cols=cols)


def _shape(tensor: WeightTensor) -> tuple[int, int]:
    """(rows, cols) of a matrix, experts counted into both; (0, 0) for vectors."""
    if not tensor.matrix:
        return 0, 0
    return tensor.rows * tensor.count, tensor.cols * tensor.count


def adapter_tensors(arch: Architecture, training: Training) -> Iterator[ParamTensor]:
    """lora_A (r x in) and lora_B (out x r) per targeted linear; DoRA adds lora_magnitude_vector (out)."""
    rank = training.lora.rank
    for layer_index, linear in targeted_linears(arch, training.lora.targets):
        yield ParamTensor(elements=rank * linear.in_features, trainable=True, role="lora_A", layer=layer_index,
                          adapter=True, rows=rank, cols=linear.in_features)
        yield ParamTensor(elements=linear.out_features * rank, trainable=True, role="lora_B", layer=layer_index,
                          adapter=True, rows=linear.out_features, cols=rank)
        if training.finetune == "dora":
            yield ParamTensor(elements=linear.out_features, trainable=True, role="lora_magnitude_vector",
                              layer=layer_index, adapter=True)


def targeted_linears(arch: Architecture, targets: tuple[str, ...]) -> list[tuple[int | None, Linear]]:
    """(block index, Linear) for every linear PEFT would wrap; unknown names are an error naming the known."""
    candidates = list(_named_linears(arch))
    known = {linear.name for _, linear in candidates}
    wanted = set(targets)
    if ALL_LINEAR in wanted:
        return [(index, linear) for index, linear in candidates if index is not None]
    unknown = sorted(wanted - known)
    if unknown:
        raise InvalidSetting(f"lora_targets: {', '.join(unknown)} is not a linear of this model; its linears are "
                             f"{', '.join(sorted(known))} (or pass all-linear)")
    return [(index, linear) for index, linear in candidates if linear.name in wanted]


def _named_linears(arch: Architecture) -> Iterator[tuple[int | None, Linear]]:
    index = 0
    for stack in arch.stacks():
        for layer in stack.layers:
            for linear in _layer_linears(layer):
                yield index, linear
            index += 1
    if arch.head.output is not None and not arch.head.tied:
        yield None, arch.head.output


def _layer_linears(layer: Layer) -> Iterator[Linear]:
    yield from layer.attention.linears()
    if layer.cross_attention is not None:
        yield from layer.cross_attention.linears()
    if isinstance(layer.mlp, MixtureOfExperts):
        yield layer.mlp.router()
        if layer.mlp.shared is not None:
            yield from layer.mlp.shared.linears()
    else:
        yield from layer.mlp.linears()


def trainable_parameters(tensors: tuple[ParamTensor, ...]) -> int:
    return sum(t.elements for t in tensors if t.trainable)


# --- QLoRA's 4-bit base -----------------------------------------------------------------------------------
# bitsandbytes functional.quantize_4bit: blocksize 64, two 4-bit values per byte, one fp32 absmax per block.
# With compress_statistics (bnb_4bit_use_double_quant) the absmax are themselves quantized to 8 bits in blocks
# of 256, each with an fp32 absmax, plus an fp32 offset and the 256-entry fp32 code (QLoRA paper, section 3:
# 32/64 = 0.5 bits per parameter of constants become 8/64 + 32/(64*256) = 0.127).
NF4_BLOCK = 64
NESTED_BLOCK = 256


def nf4_storages(elements: int, *, double_quant: bool) -> tuple[int, ...]:
    """Bytes of each separate allocation of one 4-bit weight: packed data, absmax (and nested statistics)."""
    blocks = -(-elements // NF4_BLOCK)
    packed = -(-elements // 2)
    if not double_quant:
        return packed, 4 * blocks
    nested = -(-blocks // NESTED_BLOCK)
    return packed, blocks, 4 * nested, 4 * NESTED_BLOCK, 4
