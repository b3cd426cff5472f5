"""Activations: the tensors autograd saves for backward, operator by operator, layer by layer.

The rule behind every line (torch/csrc/autograd/generated, derivatives.yaml): an operator saves an input only
when the gradient of another input needs it, and only if that other input requires grad. So a linear saves
its input x only when its weight trains (a frozen base linear under LoRA saves nothing new), `a * b` saves
each factor for the other's gradient, and an elementwise function saves its input or its output. Sizes are
rounded per tensor as the caching allocator does (512 bytes).

Per decoder block, in the order the Hugging Face implementations (transformers 5.23, modeling_llama.py,
modeling_gpt2.py, integrations/sdpa_attention.py) run it, with T = batch x sequence tokens and E the compute
dtype's bytes:

- RMSNorm (LlamaRMSNorm): `x.to(float32)` (a new tensor when E < 4), `pow(2).mean` and `rsqrt` (T fp32),
  `x * rsqrt` saves x (fp32) and rsqrt; `weight * normed.to(E)` saves normed (T x h x E) when the weight trains.
  LayerNorm (native_layer_norm): saves x, mean and rstd (T fp32 each).
- attention, sdpa or flash: q (after rotary), k and v as the kernel receives them (transformers passes the
  kv heads with enable_gqa, so no repeat; with use_cache=True, the default even in training, k and v are the
  DynamicCache's torch.cat copies, which for a fused qkv projection come on top of the projection output
  that q, a view of it, keeps alive), the output (T x heads x head_dim, already in (b, s, h, d) layout,
  which o_proj then reads without a copy) and the log-sum-exp (b x heads x s, fp32).
  eager: q, k and v repeated to all heads (repeat_kv), the fp32 softmax (b x heads x s x s x 4) and its cast to
  E when E < 4 (the softmax in E alone where Attention.softmax_dtype is "model"), the dropout mask when
  attention dropout is on, and the transposed output copy for o_proj. With attention logit soft-capping
  (Attention.logit_softcap, Gemma 2, modeling_gemma2.py eager_attention_forward: scores / cap, tanh, * cap)
  tanh saves its output, b x heads x s x s x E, too.
- gated MLP: gate (saved by the activation), act(gate) and up (saved by the product), product (saved by
  down_proj when it trains). Plain MLP: up output and the activation output; `gelu_new` is written out in
  Python ops (transformers/activations.py NewGELUActivation) and saves five tensors of T x intermediate.
- residual sums: h + attention and h + MLP are saved by the next norm.
- dropout (nn.Dropout -> native_dropout): a bool mask of the tensor's size per dropout site.
- LoRA (peft/tuners/lora/layer.py Linear.forward): lora_A saves its input, cast to the adapter dtype (a new
  tensor when they differ), or the dropout output plus mask; lora_B saves lora_A's output (T x r).

Korthikanti et al. 2022 (eq. 2) count 34·s·b·h + 5·a·s²·b per GPT-3 block with eager attention and dropout
in 16-bit; vramfit's sum for the same block gives the same terms, and drops the s² ones for sdpa/flash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramfit.memory.gradients import allocation_bytes
from vramfit.model.architecture import (
    MLP,
    Architecture,
    Attention,
    GatedMLP,
    LatentAttention,
    Layer,
    Linear,
    MixtureOfExperts,
    Norm,
)

FP32 = 4
INDEX = 8  # int64 token ids and expert indices

# Tensors an activation function saves besides its output, as transformers implements it.
_ACTIVATION_EXTRA = {"gelu_new": 4, "gelu_fast": 3, "gelu_accurate": 4, "quick_gelu": 2, "relu": 0, "relu2": 1}


@dataclass(frozen=True, kw_only=True, slots=True)
class Shape:
    """What the saved tensors of one micro-batch on one GPU depend on.

    tokens_per_seq: sequence length on this GPU (divided by context parallelism). shard: tensor-parallel
    degree for the head- and intermediate-sized tensors; replicated: divisor for the h-sized tensors (the
    tensor-parallel degree with sequence parallelism, else 1). trains: whether block weights train (full
    fine-tuning of this block); kv_cache: the forward builds a KV cache (transformers with use_cache=True, its
    default unless gradient checkpointing is on), so k and v reach the kernel as the cache's torch.cat copies;
    expand_kv: k and v are expanded to every query head before the kernel (litgpt); amp: autocast over fp32
    parameters: the residual stream and the norms stay fp32 (the embedding is not
    autocast and `fp32 + bf16` promotes), and every linear casts its input to the compute dtype on its own
    (autocast caches casts of leaf parameters only, aten/src/ATen/autocast_mode.h `cached_cast`), so each
    linear saves its own low-precision copy of the norm output; qkv_view: v is a view of a fused q|k|v
    output that the kernel's saved v keeps alive (litgpt, multi-head attention; frameworks.py); qkv_lora: LoRA on
    q, k, v is one fused module (litgpt LoRAQKVLinear, see _fused_qkv_lora_saved); lora: {linear name: (rank,
    adapter bytes, lora dropout > 0)}; softmax_saves_input: torch < 1.11, whose softmax and log_softmax saved their
    input for backward beside their output (settings.TORCH_SOFTMAX_INPUT_FREED)."""

    @property
    def stream_bytes(self) -> int:
        return FP32 if self.amp else self.compute_bytes

    batch: int
    seq: int
    compute_bytes: int
    attention: str = "sdpa"
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    shard: int = 1
    replicated: int = 1
    trains: bool = True
    kv_cache: bool = False
    native_activations: bool = False
    expand_kv: bool = False
    amp: bool = False
    qkv_view: bool = False
    qkv_lora: bool = False
    softmax_saves_input: bool = False
    lora: dict[str, tuple[int, int, bool]] = field(default_factory=dict, hash=False)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


@dataclass(frozen=True, kw_only=True, slots=True)
class Saved:
    """Bytes saved for backward, by part (norms, attention, mlp, residual, dropout, lora)."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def _t(elements: int, nbytes: int) -> int:
    return allocation_bytes(elements * nbytes)


def norm_saved(norm: Norm, width: int, rows: int, shape: Shape, *, trains: bool) -> int:
    """Saved by one norm over `rows` vectors of `width` (its input x is counted where it was made)."""
    e = shape.stream_bytes
    if norm.kind == "layer":
        return 2 * _t(rows, FP32)
    upcast = _t(rows * width, FP32) if e < FP32 else 0
    normed = _t(rows * width, FP32 if norm.weight_in_fp32 else e) if trains else 0
    return upcast + _t(rows, FP32) + normed


def _lora_saved(group: list[Linear], width_in: int, input_saved: bool, shape: Shape) -> int:
    """What LoRA adds on linears that read the same input: each lora_A saves its input cast to the adapter
    dtype (a copy per adapter, since each PEFT layer casts on its own) or, without a cast, the shared input
    once when nothing else saves it; with lora dropout, each its dropout output and mask; each lora_B saves
    lora_A's output (T x r)."""
    t, total, shared_input = shape.tokens, 0, False
    for linear in group:
        adapter = shape.lora.get(linear.name)
        if adapter is None:
            continue
        rank, adapter_bytes, dropout = adapter
        if lora_reads_input(adapter, shape):
            shared_input = True
        else:
            total += _lora_own_input(width_in, adapter_bytes, dropout, shape)
        total += _t(t * rank, adapter_bytes)
    return total + (_t(t * width_in, shape.compute_bytes) if shared_input and not input_saved else 0)


def lora_reads_input(adapter: tuple[int, int, bool], shape: Shape) -> bool:
    """An adapter (Shape.lora's rank, adapter bytes, dropout) in the compute dtype without dropout: lora_A saves
    the very tensor its base linear reads, no copy of its own."""
    return adapter[1] == shape.compute_bytes and not adapter[2]


def _lora_own_input(width_in: int, adapter_bytes: int, dropout: bool, shape: Shape) -> int:
    """lora_A's own input: the input cast to the adapter dtype, or the dropout output and its 1-byte mask."""
    t = shape.tokens
    return _t(t * width_in, adapter_bytes) + (_t(t * width_in, 1) if dropout else 0)


def _fused_qkv_lora_saved(group: list[Linear], width_in: int, input_saved: bool, shape: Shape) -> int:
    """LoRA on q, k, v as one litgpt LoRAQKVLinear (lit_gpt/lora.py at 8641822, litgpt/lora.py at 00af8b0d):
    `F.linear(self.lora_dropout(x), self.lora_A)` saves one dropout output and its mask for all adapted
    projections (the shared input itself when there is no dropout and nothing else saves it), lora_A's output
    (T x r per adapted projection) is saved by the conv1d that applies lora_B, and when not all of q, k, v are
    adapted `zero_pad` scatters lora_B's output into the fused width with `index_copy`, whose derivative
    (derivatives.yaml: `grad.index_select(dim, index).expand_as(source)`) saves that source: T x the adapted
    output widths."""
    adapted = [linear for linear in group if linear.name in shape.lora]
    if not adapted:
        return 0
    t = shape.tokens
    adapter = shape.lora[adapted[0].name]
    rank, adapter_bytes, dropout = adapter
    if lora_reads_input(adapter, shape):
        dropped = 0 if input_saved else _t(t * width_in, shape.compute_bytes)
    else:
        dropped = _lora_own_input(width_in, adapter_bytes, dropout, shape)
    after_a = _t(t * rank * len(adapted), adapter_bytes)
    widths = sum(linear.out_features // shape.shard for linear in adapted)
    source = _t(t * widths, adapter_bytes) if len(adapted) < len(group) else 0
    return dropped + after_a + source


def attention_saved(attn: Attention | LatentAttention, shape: Shape) -> int:
    """q, k, v, output and softmax statistics (sdpa/flash) or scores (eager), per the module docstring."""
    if isinstance(attn, LatentAttention):
        return _latent_attention_saved(attn, shape)
    e, b, s, tp = shape.compute_bytes, shape.batch, shape.seq, shape.shard
    heads, kv_heads = attn.heads // tp, max(1, attn.kv_heads // tp)
    q = _t(b * s * heads * attn.head_dim, e)
    if shape.attention == "eager":
        kv = 2 * q
        upcast = attn.softmax_dtype == "fp32" and e < FP32
        softmax = _t(b * heads * s * s, FP32) + _t(b * heads * s * s, e) if upcast else _t(b * heads * s * s, e)
        dropout = _t(b * heads * s * s, 1) + _t(b * heads * s * s, e) if shape.attention_dropout else 0
        capped = _t(b * heads * s * s, e) if attn.logit_softcap is not None else 0
        # torch < 1.11: the scores softmax reads, in fp32 where it upcasts (its dtype=float32 copy, or autocast's
        # cast: softmax is on autocast's fp32 list), else in E
        scores = _t(b * heads * s * s, FP32 if upcast or shape.amp else e) if shape.softmax_saves_input else 0
        return q + kv + capped + softmax + scores + dropout + q  # + the transposed output copy o_proj reads
    kv = 2 * _t(b * s * (heads if shape.expand_kv else kv_heads) * attn.head_dim, e)
    kv += _sliding_mask(attn, shape)
    if attn.fused and shape.kv_cache and attn.causal:
        kv *= 2  # q is a view of the fused projection, keeping all of it alive beside the cache's k and v
    kv += _fused_output_kept(attn, shape, heads, kv_heads)
    qk_norms = sum(norm_saved(n, attn.head_dim, b * s * (heads if n.name == "q_norm" else kv_heads),
                              shape, trains=shape.trains) for n in attn.norms())
    return q + kv + q + _t(b * heads * s, FP32) + qk_norms


def _fused_output_kept(attn: Attention, shape: Shape, heads: int, kv_heads: int) -> int:
    """litgpt (qkv_view) with as many kv heads as query heads: the kernel's saved v is a view of the fused
    q|k|v output (T x (heads + 2 kv_heads) x head_dim), so beside the q and k copies counted above that whole
    output stays alive in place of a v of its own: + q|k|v - v."""
    if not shape.qkv_view or kv_heads != heads:
        return 0
    t, e = shape.tokens, shape.compute_bytes
    return _t(t * (heads + 2 * kv_heads) * attn.head_dim, e) - _t(t * kv_heads * attn.head_dim, e)


def _sliding_mask(attn: Attention, shape: Shape) -> int:
    """SDPA over a sliding window gets a mask: transformers skips it (is_causal instead) only while the keys
    fit in the window (masking_utils.py _ignore_causal_mask_sdpa: `local_attention_size is not None and
    kv_length >= local_attention_size` keeps it), and torch's SDPA converts the boolean (b, 1, s, s) mask to
    the query dtype at each call (aten/src/ATen/native/transformers/attention.cpp convert_boolean_attn_mask),
    which the kernel saves as its attention bias for backward."""
    window = attn.sliding_window
    if shape.attention != "sdpa" or window is None or shape.seq < window:
        return 0
    return _t(shape.batch * shape.seq * shape.seq, shape.compute_bytes)


def _latent_attention_saved(attn: LatentAttention, shape: Shape) -> int:
    """MLA without an MLA kernel (transformers): the latent projections and norms, then full-width q, k, v."""
    e, t, tp = shape.compute_bytes, shape.tokens, shape.shard
    heads = attn.heads // tp
    latents = (attn.q_lora_rank or 0) + attn.kv_lora_rank + attn.qk_rope_head_dim
    q_and_k = 2 * _t(t * heads * attn.qk_head_dim, e)
    v_and_out = 2 * _t(t * heads * attn.v_head_dim, e)
    return _t(t * latents, e) * 2 + q_and_k + v_and_out + _t(shape.batch * heads * shape.seq, FP32)


def feed_forward_saved(mlp: MLP | GatedMLP, tokens: int, shape: Shape) -> int:
    """Gated: gate, act(gate), up, product; plain: up output, activation internals and output."""
    e = shape.compute_bytes
    width = mlp.intermediate_size // shape.shard
    one = _t(tokens * width, e)
    extra = _ACTIVATION_EXTRA.get(mlp.activation, 1)
    if shape.native_activations and extra > 1:
        extra = 1  # one fused op saves its input only
    down_input = one if shape.trains else 0
    if isinstance(mlp, GatedMLP):
        return extra * one + 2 * one + down_input
    return extra * one + down_input


def moe_saved(moe: MixtureOfExperts, shape: Shape) -> int:
    """Router softmax (fp32) and top-k, then each routed token through its expert: the gathered input (when
    the experts train), the expert MLP's saved tensors on tokens x experts_per_token rows, the output scaled
    by its routing weight."""
    e, t, k = shape.compute_bytes, shape.tokens, moe.experts_per_token
    router = _t(t * moe.experts, FP32) + _t(t * k, INDEX) + 2 * _t(t * k, FP32)
    routed = t * k
    # The gathered input is saved by the experts' first projection only when its weight trains (or an
    # adapter reads it); the expert output is saved by its product with the routing weight either way.
    adapted = any(linear.name in shape.lora for linear in moe.expert.linears())
    inputs = 2 if shape.trains or adapted else 1
    experts = inputs * _t(routed * moe.hidden_size, e) + feed_forward_saved(moe.expert, routed, shape)
    shared = feed_forward_saved(moe.shared, t, shape) if moe.shared is not None else 0
    return router + experts + shared + (_t(t, e) if moe.shared_gate else 0)


def layer_saved(layer: Layer, shape: Shape) -> Saved:
    """Everything one block saves, by part. The block's input is counted by the block before it."""
    t = shape.tokens
    stream = _t(t * layer.attention.hidden_size // shape.replicated, shape.stream_bytes)
    rows = t // shape.replicated
    norms = sum(norm_saved(n, n.size, rows, shape, trains=shape.trains) for n in layer.norms)
    linear_inputs = _linear_inputs(layer, shape, _t(t * layer.attention.hidden_size // shape.replicated,
                                                    shape.compute_bytes))
    attention = attention_saved(layer.attention, shape)
    if layer.cross_attention is not None:
        attention += attention_saved(layer.cross_attention, shape)
    mlp = moe_saved(layer.mlp, shape) if isinstance(layer.mlp, MixtureOfExperts) else feed_forward_saved(
        layer.mlp, t, shape)
    residual = stream * (1 if layer.parallel else 2) if _keeps_residual(layer, shape) else 0
    sites = 2 if shape.hidden_dropout else 0
    dropout = sites * _t(rows * layer.attention.hidden_size, 1)
    return Saved(parts={"norms": norms, "linear_inputs": linear_inputs, "attention": attention, "mlp": mlp,
                        "residual": residual, "dropout": dropout})


def _keeps_residual(layer: Layer, shape: Shape) -> bool:
    """The residual sums are saved by the norm that reads them, unless that norm's first op makes an fp32
    copy (RMSNorm in a 16-bit stream: `hidden_states.to(torch.float32)`, modeling_llama.py LlamaRMSNorm), which
    is what it saves instead (counted with the norm); `add` itself saves nothing (derivatives.yaml)."""
    return any(n.kind == "layer" for n in layer.norms) or shape.stream_bytes >= FP32


def _linear_inputs(layer: Layer, shape: Shape, stream: int) -> int:
    """Inputs of the block's linears. Grouped by the tensor they read: the norm outputs (saved once each when
    the block trains), the attention output (saved by the attention kernel anyway) and the MLP product
    (counted in the MLP when the block trains); LoRA adds its own on top."""
    attn = list(layer.attention.linears())
    ffn = _feed_forward_linears(layer)
    ffn_in, ffn_out = (ffn, []) if len(ffn) == 1 else (ffn[:-1], ffn[-1:])
    # A parallel block reads one norm output (GPT-J, phi: one input_layernorm) or, with a norm per branch,
    # two (modeling_gpt_neox.py use_parallel_residual: input_layernorm for attention, post_attention_layernorm
    # for the MLP, both of the same x).
    normed_inputs = 2 if not layer.parallel else min(2, len(layer.norms))
    if shape.amp:  # one cast copy per linear reading a norm output
        normed_inputs = len(attn) - 1 + len(ffn_in)
    base = normed_inputs * stream if shape.trains else 0
    hidden = layer.attention.hidden_size
    qkv_lora = _fused_qkv_lora_saved if shape.qkv_lora else _lora_saved
    lora = (qkv_lora(attn[:-1], hidden // shape.replicated, shape.trains, shape)
            + _lora_saved(attn[-1:], attn[-1].in_features // shape.shard, True, shape)
            + _lora_saved(ffn_in, hidden // shape.replicated, shape.trains, shape)
            + sum(_lora_saved([out], out.in_features // shape.shard, shape.trains, shape) for out in ffn_out))
    return base + lora


def _feed_forward_linears(layer: Layer) -> list[Linear]:
    """Linears reading the MLP input first, the one making the block output last."""
    mlp = layer.mlp
    if isinstance(mlp, MixtureOfExperts):
        shared = list(mlp.shared.linears()) if mlp.shared is not None else []
        return [mlp.router(), *shared] if shared else [mlp.router()]
    return list(mlp.linears())


def embedding_saved(arch: Architecture, shape: Shape, *, trains: bool) -> int:
    """The embedding output (the first block's input, saved by its norm when it requires grad), learned
    positions added to it, and a dropout mask when embedding dropout is on."""
    e, rows = shape.stream_bytes, shape.tokens // shape.replicated
    out = _t(rows * arch.hidden_size, e) if trains else 0
    mask = _t(rows * arch.hidden_size, 1) if shape.hidden_dropout else 0
    norm = norm_saved(arch.embedding.norm, arch.hidden_size, rows, shape, trains=trains) \
        if arch.embedding.norm else 0
    return out + mask + norm


def rotary_saved(arch: Architecture, shape: Shape) -> int:
    """cos and sin (1 x s x head_dim, compute dtype), made once per forward and saved by every rotary mul."""
    if arch.embedding.positions is not None or arch.decoder is None:
        return 0
    first = arch.decoder.layers[0].attention
    head_dim = first.head_dim if isinstance(first, Attention) else first.qk_rope_head_dim
    return 2 * _t(shape.seq * head_dim, shape.compute_bytes)


def final_norm_saved(arch: Architecture, shape: Shape, *, trains: bool) -> int:
    """The last norm before the head, and its output that the head saves when the head trains."""
    stack = arch.decoder or arch.encoder
    norm = stack.final_norm if stack else None
    rows = shape.tokens // shape.replicated
    transform = head_transform_saved(arch, rows, shape, trains=trains)
    if norm is None:
        return transform
    head_input = _t(rows * arch.hidden_size, shape.compute_bytes) if trains else 0
    return norm_saved(norm, arch.hidden_size, rows, shape, trains=trains) + head_input + transform


def head_transform_saved(arch: Architecture, rows: int, shape: Shape, *, trains: bool) -> int:
    """A head's transform before the output projection (BERT's MLM head, modeling_bert.py
    BertPredictionHeadTransform: dense -> gelu -> LayerNorm, then the decoder). The hidden states require grad
    whether or not the head trains, so each step saves its input: the dense output (saved by the activation),
    the activation output (saved by the LayerNorm, with its mean and rstd) and the LayerNorm output (saved by
    the decoder when the decoder's weight trains: tied to the token table, it trains with full fine-tuning).
    The transform's own input, the last block's output, is counted with the blocks."""
    head = arch.head
    if head.output is None or not head.transform:
        return 0
    one = _t(rows * arch.hidden_size, shape.compute_bytes)
    linears = sum(1 for part in head.transform if isinstance(part, Linear))
    norms = [part for part in head.transform if isinstance(part, Norm)]
    saved = linears * one + sum(one + norm_saved(n, n.size, rows, shape, trains=trains) for n in norms)
    return saved + (one if trains else 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class LossMemory:
    """The output head and cross-entropy. saved: kept from the loss to its backward (the fp32 log-softmax and
    the shifted labels). forward_transient: extra bytes alive at the loss in the forward pass (logits, their
    fp32 copy). backward_transient: extra bytes alive at the start of backward (the log-softmax gradients).
    kept: the part of `saved` that the training loop itself still references after the loss's backward (litgpt's
    `logits`, alive until the next forward returns): it stays through the blocks' backward and the optimizer step."""

    saved: int
    forward_transient: int
    backward_transient: int
    formula: str
    kept: int = 0


def loss_memory(arch: Architecture, shape: Shape, *, chunks: int, fp32_logits: bool, fp32_loss: bool = True,
                logits_kept: bool = False) -> LossMemory:
    """Logits T x V in the compute dtype, upcast to fp32 for the loss, log_softmax saving its fp32 output.

    transformers (loss/loss_utils.py ForCausalLMLoss): the model returns logits in its dtype (kept by the
    caller while the loss runs), `logits.float()` copies them, cross_entropy's log_softmax saves T x V x 4.
    Backward: nll_loss_backward and _log_softmax_backward_data each make a T x V fp32 gradient while the saved
    output is alive, then the cast back to E. torchtune with CEWithChunkedOutputLoss: the head runs on `chunks`
    slices; each slice is upcast and its loss taken alone, so only the fp32 copies of one slice coexist,
    while the log-softmax of every slice stays saved. fp32_logits: the model itself returns fp32 logits
    (torchtune's `self.output(h).float()` without chunking)."""
    head = arch.head.output
    if head is None:
        return LossMemory(saved=0, forward_transient=0, backward_transient=0, formula="no output head")
    e, t = shape.compute_bytes, shape.tokens
    vocab = head.out_features // shape.shard
    labels = _t(t, INDEX)
    if not fp32_loss:
        return _native_loss(t, vocab, e, chunks, logits_kept, labels, shape.softmax_saves_input)
    if arch.head.shifted_fp32_loss and chunks == 1:
        return shifted_fp32_loss(shape, vocab, labels)
    log_probs = _t(t * vocab, FP32)
    piece = -(-t // chunks)
    logits = _t(t * vocab, e)
    upcast = _t(piece * vocab, FP32) if (e < FP32 or chunks > 1) else 0
    forward = logits + upcast
    backward = 2 * _t(piece * vocab, FP32)
    formula = (f"saved: T x V x 4 (log_softmax) + T x 8 (labels); forward transient: T x V x {e} (logits)"
               f" + T/{chunks} x V x 4 (fp32 copy); backward transient: 2 x T/{chunks} x V x 4")
    if fp32_logits and chunks == 1:
        forward = _t(t * vocab, FP32)
        formula += "; the model returns fp32 logits (its cast from E is freed before the loss)"
    if shape.softmax_saves_input and chunks == 1:
        # torch < 1.11: log_softmax also saved the fp32 logits it read, alive from the loss to its backward
        read = _t(t * vocab, FP32)
        forward -= read   # the fp32 tensor it reads (the upcast copy, or the fp32 logits) is now counted as saved
        log_probs += read
        formula += "; torch < 1.11: log_softmax keeps its T x V x 4 input too"
    return LossMemory(saved=log_probs + labels, forward_transient=forward, backward_transient=backward,
                      formula=formula)


def shifted_fp32_loss(shape: Shape, vocab: int, labels: int) -> LossMemory:
    """The loss a model's own forward takes on a shifted fp32 copy (Head.shifted_fp32_loss; ChatGLM2/3 and GLM-4
    remote code, modeling_chatglm.py ChatGLMForConditionalGeneration.forward). With T = batch x seq tokens and
    S = batch x (seq - 1) shifted rows, in the order the forward runs:
    1. `lm_logits = output_layer(h)`: T x V x E; `lm_logits.to(torch.float32)`: T x V x 4, the E logits freed
       by the rebinding (their cast's backward saves nothing);
    2. `shift_logits = lm_logits[..., :-1, :].contiguous()`: S x V x 4, a local kept until the forward returns;
       at batch 1 no copy: dropping the last row of a contiguous (1, T, V) tensor leaves it contiguous (the
       stride of a size-1 dimension does not count), so `.contiguous()` returns the view;
    3. CrossEntropyLoss: log_softmax saves its S x V x 4 output for backward (the `saved` term);
    4. `lm_logits = lm_logits.to(hidden_states.dtype)`: T x V x E made while the fp32 logits, the shifted copy and
       the log-softmax are alive. This is the forward's largest moment: transient 4TV + 4SV + E·TV (4TV + E·TV
       at batch 1) on top of the saved log-softmax (step 1's E + 4 is smaller). The returned E logits die with the model output,
       before backward (transformers Trainer.compute_loss).
    Backward: nll_loss_backward and _log_softmax_backward_data each make an S x V x 4 gradient while the saved
    log-softmax is alive; SliceBackward's T x V x 4 zeros come after the log-softmax is freed (4TV + 4SV, less)."""
    e, rows = shape.compute_bytes, shape.batch * (shape.seq - 1)
    fp32, shifted, cast = _t(shape.tokens * vocab, FP32), _t(rows * vocab, FP32), _t(shape.tokens * vocab, e)
    copy, labels = (shifted, labels) if shape.batch > 1 else (0, 0)   # shift_labels too is a view at batch 1
    formula = (f"the model's own loss (modeling_chatglm.py): saved: S x V x 4 (log_softmax; S: seq - 1 rows per "
               f"sequence) + T x 8 (shifted labels, batch > 1 only); forward transient: T x V x 4 (fp32 logits) + S x V x 4 (shifted "
               f"copy, batch > 1 only) + T x V x {e} (cast back); backward transient: 2 x S x V x 4")
    return LossMemory(saved=shifted + labels, forward_transient=fp32 + copy + cast,
                      backward_transient=2 * shifted, formula=formula)


def selective_saved(layer: Layer, shape: Shape) -> int:
    """Selective activation checkpointing as torchtitan's per-op policy does it
    (torchtitan/models/llama3/infra/parallelize.py `_save_list`): inside a checkpointed block, keep the
    attention kernel's output and log-sum-exp and every other matmul output (the 1st, 3rd, ... `aten.mm` in
    execution order), recompute the rest; plus the block's output, which the next block keeps as its input."""
    e, t = shape.compute_bytes, shape.tokens
    hidden = layer.attention.hidden_size
    kept = [_t(t * linear.out_features // _out_shard(linear, hidden, shape), e)
            for index, linear in enumerate(_matmuls(layer)) if index % 2 == 0]
    attn = layer.attention
    heads = attn.heads // shape.shard
    width = attn.head_dim if isinstance(attn, Attention) else attn.v_head_dim
    kernel = _t(t * heads * width, e) + _t(shape.batch * heads * shape.seq, FP32)
    return sum(kept) + kernel + _t(t * hidden // shape.replicated, e)


def _out_shard(linear: Linear, hidden: int, shape: Shape) -> int:
    return shape.replicated if linear.out_features == hidden else shape.shard


def _matmuls(layer: Layer) -> list[Linear]:
    attention = list(layer.attention.linears())
    if isinstance(layer.mlp, MixtureOfExperts):
        shared = list(layer.mlp.shared.linears()) if layer.mlp.shared is not None else []
        return attention + [layer.mlp.router(), *layer.mlp.expert.linears(), *shared]
    return attention + list(layer.mlp.linears())


def _native_loss(t: int, vocab: int, e: int, chunks: int, logits_kept: bool, labels: int,
                 saves_input: bool = False) -> LossMemory:
    """Cross-entropy in the model dtype per chunk (litgpt): each chunk's log-softmax saved in dtype E, the
    logits kept by the caller through backward when `logits_kept`, two E-sized gradients per chunk. With
    `saves_input` (torch < 1.11) the log-softmax also keeps the logits it read, so they stay to the backward."""
    piece = -(-t // chunks)
    logits = _t(t * vocab, e)
    kept = logits_kept or saves_input
    saved = _t(t * vocab, e) + labels + (logits if kept else 0)
    return LossMemory(saved=saved, forward_transient=0 if kept else logits, kept=logits if logits_kept else 0,
                      backward_transient=2 * _t(piece * vocab, e),
                      formula=f"saved: T x V x {e} (log_softmax per chunk, in the logits' dtype)"
                              + (f" + T x V x {e} (logits kept by the loop)" if logits_kept else "")
                              + (f" + T x V x {e} (its input, torch < 1.11)" if saves_input and not logits_kept
                                 else "")
                              + f"; backward transient: 2 x T/{chunks} x V x {e}")
