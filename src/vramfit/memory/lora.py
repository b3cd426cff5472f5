"""Which parameters a fine-tuning method trains, and what LoRA, DoRA and QLoRA add.

Every parameter tensor of the model is a `ParamTensor`: its element count, whether it is trained, and how its
base weight is stored. The rest of the training model (gradients, optimizer states, ZeRO/FSDP sharding) works
tensor by tensor on this list, because the allocator rounds every tensor up on its own.

- full: every parameter trains, except the blocks below `frozen_layers` (requires_grad=False).
- lora (PEFT, peft/tuners/lora/layer.py `Linear.update_layer`): the base model is frozen; each targeted
  `nn.Linear` gets lora_A (rank x in_features) and lora_B (out_features x rank), no biases.
- dora (PEFT `use_dora=True`, peft/tuners/lora/dora.py): LoRA plus a magnitude vector of out_features.
- qlora: LoRA over a base whose block linears are bitsandbytes 4-bit (NF4); embeddings, norms, biases and the
  output head stay in the compute dtype (transformers' bitsandbytes integration skips `lm_head`), unless the
  framework quantizes the head too (`quantized_head`: Lightning's BitsandbytesPrecision, which litgpt uses,
  replaces every nn.Linear, lm_head included: lightning/fabric/plugins/precision/bitsandbytes.py convert_module
  `_convert_layers(module, self._linear_cls, self.ignore_modules)`, and litgpt passes no ignore_modules).

Target names are PEFT's `target_modules`: the module name of each Linear (`q_proj`, `c_attn`, ...), or
`all-linear`, which PEFT expands to every `nn.Linear` except the output layer (peft/tuners/tuners_utils.py,
`_maybe_include_all_linear_layers`). Routed experts are fused 3-D parameters in transformers 5, not
`nn.Linear` modules, so neither a name nor all-linear reaches them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vramfit.errors import InvalidSetting
from vramfit.held import put
from vramfit.memory.activations import Shape, lora_reads_input
from vramfit.memory.gradients import allocation_bytes
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
                      blocks: range | None = None, quantized_head: bool = False) -> tuple[ParamTensor, ...]:
    """The model's tensors under the fine-tuning method, base weights first, then adapters. `held`: the
    (sliced) tensors one GPU holds under tensor/pipeline parallelism, default all; `blocks`: its blocks;
    `quantized_head`: QLoRA quantizes the output head too (see the module docstring)."""
    base = _base_tensors(tuple(weight_tensors(arch) if held is None else held), training, quantized_head)
    if training.finetune == "full":
        return base
    adapters = (t for t in adapter_tensors(arch, training)
                if blocks is None or t.layer is None or t.layer in blocks)
    return base + tuple(adapters)


# (ids of the weight tensors, finetune, frozen_layers) -> (those tensors, their ParamTensors). An estimate
# asks twice and searches ask again and again for the same frozen tensors (rank_tensors and weight_tensors
# hand out the same objects); the key holds every Training field _base_tensor reads, and the entry holds the
# tensors, so their ids are not reused while it lives. The cache starts afresh beyond _BASE_SIZE.
_BASE: dict[tuple[tuple[int, ...], str, int, bool], tuple[tuple[WeightTensor, ...], tuple[ParamTensor, ...]]] = {}
_BASE_SIZE = 256


def _base_tensors(tensors: tuple[WeightTensor, ...], training: Training,
                  quantized_head: bool) -> tuple[ParamTensor, ...]:
    key = (tuple(map(id, tensors)), training.finetune, training.frozen_layers, quantized_head)
    hit = _BASE.get(key)
    if hit is None:
        hit = (tensors, tuple(_base_tensor(t, training, quantized_head) for t in tensors))
        put(_BASE, key, hit, _BASE_SIZE)
    return hit[1]


def _base_tensor(tensor: WeightTensor, training: Training, quantized_head: bool) -> ParamTensor:
    """Reads training.finetune and training.frozen_layers only (the _BASE key holds both)."""
    if training.finetune == "full":
        frozen = tensor.layer is not None and tensor.layer < training.frozen_layers
        rows, cols = _shape(tensor)
        return ParamTensor(elements=tensor.elements, trainable=not frozen, role=tensor.role, layer=tensor.layer,
                           rows=rows, cols=cols)
    head = quantized_head and tensor.role == "output"
    quantized = training.finetune == "qlora" and (tensor.layer is not None or head) and tensor.matrix
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


# --- bitsandbytes < 0.43.2: the input each 4-bit linear kept -------------------------------------------------
# bitsandbytes/autograd/_functions.py MatMul4Bit.forward (0.41.0 to 0.43.1): `if any(ctx.needs_input_grad[:2]):
# ctx.tensors = (A, B)`, so a 4-bit linear whose input requires grad (every one with a LoRA adapter at or below
# it) kept A, its input in the compute dtype, although backward only reads B (grad_A = grad_output @
# dequantize_4bit(B).t()). Fixed by commit 9e753741 (#1270, 2024-07-16): `ctx.tensors = (None, B)`, in 0.43.2.
# The fix changed nothing else that lives on the GPU: forward and backward still dequantize B into a transient
# compute-dtype copy per call, before and after. A is held on ctx, not by save_for_backward, so backward never
# releases it: it lives until the graph itself is freed, when the last tensor referencing it (the loss, the
# logits) goes (checked on CPU: a tensor kept as ctx.tensors outlives loss.backward() until `del loss`;
# with ctx.save_for_backward it is freed by backward). A tensor that something else already saves costs
# nothing more: vramfit counts each distinct tensor once.


def held_4bit_inputs(layer: Layer, shape: Shape) -> int:
    """The inputs a block's 4-bit linears keep that nothing else saves, grouped by the tensor they read:
    1. the attention input (the norm output): q, k, v (or the fused qkv) read one tensor;
    2. the MLP input (the second norm output; in a parallel block with one shared norm, phi/GPT-J, the same
       tensor as 1, counted once): gate and up (or fc) read one tensor;
    3. the MLP output linear's input, the product act(gate) * up (T x I): a frozen down_proj is its only saver;
    4. o_proj reads the attention kernel's output, which the kernel saves anyway: nothing new. sdpa/flash on
       CUDA allocate the output as (b, s, h, d) and return it transposed (aten/src/ATen/native/transformers/cuda/
       attention.cu, _scaled_dot_product_flash_attention_cuda `attention.view({b, s, h, d}).transpose(1,2)`,
       _scaled_dot_product_efficient_attention_cuda `at::empty({B, M, num_heads, Kv})` then transpose), so
       `y.transpose(1, 2).reshape(b, s, h * d)` is a view of the saved tensor (on CPU the flash kernel's output is
       (b, h, s, d) and the reshape copies: checked, not modelled); eager: the transposed copy, counted with the
       attention.
    Under AMP every 4-bit linear casts its fp32 input to the compute dtype itself (bitsandbytes Linear4bit.forward
    `x.to(self.compute_dtype)`), so each keeps its own copy."""
    normed, hidden, _attn_out, ffn_out = _input_groups(layer, shape)
    total = sum(_group_input(group, hidden, shape, casts=shape.amp) for group in normed if group)
    return total + sum(_group_input([out], out.in_features // shape.shard, shape, casts=False) for out in ffn_out)


def _input_groups(layer: Layer, shape: Shape) -> tuple[list[list[Linear]], int, Linear, list[Linear]]:
    """A block's 4-bit linears by the tensor they read: the groups fed by a norm output (attention's q/k/v and the
    MLP's input linears; one group when a parallel block shares its norm), the hidden width of those inputs, the
    attention output projection, and the MLP output linear (none for a single-linear feed-forward)."""
    attn = list(layer.attention.linears())
    ffn = _feed_forward_inputs(layer)
    ffn_in, ffn_out = (ffn, []) if len(ffn) == 1 else (ffn[:-1], ffn[-1:])
    shared_norm = layer.parallel and len(layer.norms) < 2
    normed = [attn[:-1] + ffn_in] if shared_norm else [attn[:-1], ffn_in]
    return normed, layer.attention.hidden_size // shape.replicated, attn[-1], ffn_out


def head_held_input(arch: Architecture, shape: Shape) -> int:
    """A 4-bit output head keeps the final norm's output (T x h), which a frozen head saves for nothing else."""
    if arch.head.output is None:
        return 0
    return _input_bytes(shape.tokens * arch.hidden_size // shape.replicated, shape)


def checkpointed_4bit_inputs(layer: Layer, shape: Shape) -> int:
    """What a block's 4-bit linears keep under non-reentrant checkpointing (torch.utils.checkpoint with
    use_reentrant=False): the forward runs with grad on and saved_tensors_hooks that drop every tensor saved with
    save_for_backward (torch/utils/checkpoint.py _checkpoint_hook), but `ctx.tensors = (A, B)` is an attribute of
    the autograd node, which no hook sees, so each 4-bit linear's input A lives until the graph goes. Nothing
    else keeps these tensors alive then, so every distinct input counts (held_4bit_inputs' "saved anyway" no
    longer applies): 1. the attention input (the norm output) read by q, k, v or the fused qkv; 2. the output
    projection's input (the attention output, tokens x its in_features); 3. the MLP input (the same tensor as 1
    in a parallel block with one shared norm); 4. the MLP output linear's input (T x I). Under AMP each linear
    of a group casts its own copy."""
    normed, hidden, attn_out, ffn_out = _input_groups(layer, shape)
    total = sum(_copies(group, hidden, shape, casts=shape.amp) for group in normed if group)
    return total + sum(_copies([out], out.in_features // shape.shard, shape, casts=False)
                       for out in [attn_out, *ffn_out])


def _copies(group: list[Linear], width: int, shape: Shape, *, casts: bool) -> int:
    """The tensor `group` reads, once, or once per linear when each casts its own copy."""
    return (len(group) if casts else 1) * _input_bytes(shape.tokens * width, shape)


def _group_input(group: list[Linear], width: int, shape: Shape, *, casts: bool) -> int:
    """One tensor read by every linear in `group`: new unless the block trains (then the linears save it as
    counted in activations._linear_inputs) or a LoRA adapter of the group saves the very same tensor (adapter in
    the compute dtype, no dropout: activations._lora_saved counts it once); one copy per linear when each casts."""
    if shape.trains:
        return 0
    if not casts and any(_lora_shares_input(linear, shape) for linear in group):
        return 0
    return _copies(group, width, shape, casts=casts)


def _lora_shares_input(linear: Linear, shape: Shape) -> bool:
    adapter = shape.lora.get(linear.name)
    return adapter is not None and lora_reads_input(adapter, shape)


def _input_bytes(elements: int, shape: Shape) -> int:
    return allocation_bytes(elements * shape.compute_bytes)


def _feed_forward_inputs(layer: Layer) -> list[Linear]:
    """The MLP's linears, those reading the MLP input first and the one making the block output last (a MoE's
    router and shared expert; its routed experts are fused 3-D parameters, not 4-bit nn.Linear modules)."""
    mlp = layer.mlp
    if isinstance(mlp, MixtureOfExperts):
        return [mlp.router(), *(mlp.shared.linears() if mlp.shared is not None else [])]
    return list(mlp.linears())
