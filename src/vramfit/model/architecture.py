"""A model described by its parts: what every memory formula reads, and nothing about file formats.

MHA, GQA and MQA are one `Attention` with `kv_heads`; MLA is `LatentAttention`; MoE is `MixtureOfExperts`
(routed + shared experts + router). An encoder is `causal=False`, so it has no KV cache. Layers are a tuple,
so mixed stacks (first-k dense then MoE, sliding-window and global layers) are a plain sum.

Every projection is a `Linear` carrying the module name the Hugging Face implementation gives it
(`q_proj`, `query_key_value`, `c_attn`, ...). The names are what PEFT's `target_modules` match, and parameter
counts are sums over these linears, so a LoRA target list and a count can never disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar, Union

from vramfit.held import held, put

NormKind = Literal["rms", "layer"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Linear:
    """y = x W^T (+ b): `in_features * out_features` weights and `out_features` biases."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False

    def parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Norm:
    """LayerNorm (weight and bias) or RMSNorm (weight only) over `size` features.

    `weight_in_fp32`: the RMSNorm multiplies by its weight in fp32 and casts afterwards, so the normalised x
    it saves for the weight's gradient is fp32 (transformers 5.23 models/gemma/modeling_gemma.py
    GemmaRMSNorm: `output * (1.0 + self.weight.float())`, `.type_as(x)`; the same in gemma2, gemma3,
    vaultgemma, recurrent_gemma, qwen3_next, qwen3_5). Llama's (LlamaRMSNorm) casts first and saves it in
    the model dtype. Set by the readers of those model types.
    """

    name: str
    size: int
    kind: NormKind = "rms"
    bias: bool = False
    weight_in_fp32: bool = False

    def parameters(self) -> int:
        return self.size * (2 if self.bias else 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    """An embedding table: `rows` vectors of `dim` features (tokens, learned positions, token types)."""

    name: str
    rows: int
    dim: int

    def parameters(self) -> int:
        return self.rows * self.dim


@dataclass(frozen=True, kw_only=True, slots=True)
class Attention:
    """Multi-head attention; grouped-query when kv_heads < heads, multi-query when kv_heads == 1.

    `head_dim` is taken as config.json states it, never re-derived. `fused` names the single projection
    that computes q, k and v together where the implementation has one (GPT-2 `c_attn`, BLOOM and Falcon
    `query_key_value`, Phi-3 `qkv_proj`); the parameter count is the same either way.

    `softmax_dtype`: the dtype of eager attention's softmax. "model": `softmax(attn_weights, dim=-1)` in
    the model dtype (transformers 5.23 models/gpt2, gpt_neo, bert, roberta, xlm_roberta, distilbert,
    electra, biogpt: eager_attention_forward; falcon passes dtype=hidden_states.dtype). "fp32": the rest
    (modeling_llama.py and the models copied from it, opt, gpt_neox, bloom, phi) write
    `softmax(..., dtype=torch.float32).to(query.dtype)`, which saves the fp32 probabilities and their cast.
    `logit_softcap`: config.json's attn_logit_softcapping (Gemma 2, modeling_gemma2.py
    eager_attention_forward: scores / cap, tanh, * cap), None when the scores are not capped.
    """

    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: NormKind | None = None     # norms on q and k (Qwen3, Gemma 3, OLMo 2, Phi-2, StableLM)
    qk_norm_across_heads: bool = False  # one weight per head and feature (OLMo 2's width-wide norm, StableLM's
                                        # norm per head): heads*head_dim and kv_heads*head_dim; else head_dim each
    qk_norm_bias: bool = False          # LayerNorm bias on those norms (Phi-2's q_layernorm/k_layernorm)
    sliding_window: int | None = None  # None: global attention over the whole context
    causal: bool = True                # False for encoders: no KV cache is kept
    cross: bool = False                # keys and values come from the encoder output (T5 decoder)
    relative_buckets: int = 0          # T5's relative position bias table (buckets x heads), first layer only
    sinks: bool = False                # one learned attention-sink logit per head (gpt-oss `sinks`)
    qk_norm_weight_in_fp32: bool = False  # Norm.weight_in_fp32 for q_norm and k_norm (Gemma 3)
    names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    fused: str | None = None
    softmax_dtype: Literal["fp32", "model"] = "fp32"
    logit_softcap: float | None = None

    def linears(self) -> tuple[Linear, ...]:
        return _derived(self, self._linears)

    def _linears(self) -> tuple[Linear, ...]:
        q, k, v, o = self.names
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        out = Linear(name=o, in_features=q_width, out_features=self.hidden_size, bias=self.out_bias)
        if self.fused:
            qkv = Linear(name=self.fused, in_features=self.hidden_size,
                         out_features=q_width + 2 * kv_width, bias=self.qkv_bias)
            return qkv, out
        return (
            Linear(name=q, in_features=self.hidden_size, out_features=q_width, bias=self.qkv_bias),
            Linear(name=k, in_features=self.hidden_size, out_features=kv_width, bias=self.qkv_bias),
            Linear(name=v, in_features=self.hidden_size, out_features=kv_width, bias=self.qkv_bias),
            out,
        )

    def norms(self) -> tuple[Norm, ...]:
        if self.qk_norm is None:
            return ()
        q_size, k_size = ((self.heads * self.head_dim, self.kv_heads * self.head_dim) if self.qk_norm_across_heads
                          else (self.head_dim, self.head_dim))
        fp32 = self.qk_norm_weight_in_fp32
        return (Norm(name="q_norm", size=q_size, kind=self.qk_norm, bias=self.qk_norm_bias, weight_in_fp32=fp32),
                Norm(name="k_norm", size=k_size, kind=self.qk_norm, bias=self.qk_norm_bias, weight_in_fp32=fp32))

    def tables(self) -> tuple[Table, ...]:
        sinks = (Table(name="sinks", rows=self.heads, dim=1),) if self.sinks else ()
        if not self.relative_buckets:
            return sinks
        return (Table(name="relative_attention_bias", rows=self.relative_buckets, dim=self.heads),) + sinks

    def parameters(self) -> int:
        return _sum_parts(self.linears(), self.norms(), self.tables())

    def kv_elements_per_token(self) -> int:
        """Cached elements per token in this layer: K and V, each kv_heads x head_dim."""
        return 0 if not self.causal else 2 * self.kv_heads * self.head_dim


@dataclass(frozen=True, kw_only=True, slots=True)
class LatentAttention:
    """Multi-head latent attention (DeepSeek-V2/V3): keys and values pass through a low-rank latent.

    q = W_qb · norm(W_qa · x) (or W_q · x when q_lora_rank is None); the latent c_kv = norm(W_kva · x) of
    kv_lora_rank plus a shared rope key of qk_rope_head_dim is what an MLA-aware runtime caches.
    """

    hidden_size: int
    heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    bias: bool = False          # attention_bias: q_a_proj, kv_a_proj_with_mqa and o_proj (never q_proj, q_b_proj,
                                # kv_b_proj: modeling_deepseek_v2.py / _v3.py in transformers 5.23)
    causal: bool = True
    sliding_window: int | None = None

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def linears(self) -> tuple[Linear, ...]:
        return _derived(self, self._linears)

    def _linears(self) -> tuple[Linear, ...]:
        q_width = self.heads * self.qk_head_dim
        if self.q_lora_rank is None:
            query: tuple[Linear, ...] = (Linear(name="q_proj", in_features=self.hidden_size,
                                                out_features=q_width),)
        else:
            query = (Linear(name="q_a_proj", in_features=self.hidden_size, out_features=self.q_lora_rank,
                            bias=self.bias),
                     Linear(name="q_b_proj", in_features=self.q_lora_rank, out_features=q_width))
        return query + (
            Linear(name="kv_a_proj_with_mqa", in_features=self.hidden_size,
                   out_features=self.kv_lora_rank + self.qk_rope_head_dim, bias=self.bias),
            Linear(name="kv_b_proj", in_features=self.kv_lora_rank,
                   out_features=self.heads * (self.qk_nope_head_dim + self.v_head_dim)),
            Linear(name="o_proj", in_features=self.heads * self.v_head_dim, out_features=self.hidden_size,
                   bias=self.bias),
        )

    def norms(self) -> tuple[Norm, ...]:
        q_norm = () if self.q_lora_rank is None else (Norm(name="q_a_layernorm", size=self.q_lora_rank),)
        return q_norm + (Norm(name="kv_a_layernorm", size=self.kv_lora_rank),)

    def tables(self) -> tuple[Table, ...]:
        return ()

    def parameters(self) -> int:
        return _sum_parts(self.linears(), self.norms())

    def kv_elements_per_token(self) -> int:
        """Decompressed K and V per token, as a runtime without MLA support (transformers) caches them."""
        return 0 if not self.causal else self.heads * (self.qk_head_dim + self.v_head_dim)

    def latent_elements_per_token(self) -> int:
        """The compressed latent plus the shared rope key, as vLLM and SGLang cache them."""
        return 0 if not self.causal else self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True, kw_only=True, slots=True)
class MLP:
    """up -> activation -> down, biases on both where the architecture has them (GPT-2, BERT, OPT)."""

    hidden_size: int
    intermediate_size: int
    bias: bool = True
    activation: str = "gelu"
    names: tuple[str, str] = ("fc1", "fc2")

    def linears(self) -> tuple[Linear, ...]:
        return _derived(self, self._linears)

    def _linears(self) -> tuple[Linear, ...]:
        up, down = self.names
        return (Linear(name=up, in_features=self.hidden_size, out_features=self.intermediate_size, bias=self.bias),
                Linear(name=down, in_features=self.intermediate_size, out_features=self.hidden_size,
                       bias=self.bias))

    def parameters(self) -> int:
        return _sum_parts(self.linears())


@dataclass(frozen=True, kw_only=True, slots=True)
class GatedMLP:
    """down(activation(gate(x)) * up(x)): SwiGLU / GeGLU, three matrices (or a fused gate_up)."""

    hidden_size: int
    intermediate_size: int
    bias: bool = False
    activation: str = "silu"
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    fused: str | None = None  # Phi-3's gate_up_proj

    def linears(self) -> tuple[Linear, ...]:
        return _derived(self, self._linears)

    def _linears(self) -> tuple[Linear, ...]:
        gate, up, down = self.names
        down_linear = Linear(name=down, in_features=self.intermediate_size, out_features=self.hidden_size,
                             bias=self.bias)
        if self.fused:
            return (Linear(name=self.fused, in_features=self.hidden_size,
                           out_features=2 * self.intermediate_size, bias=self.bias), down_linear)
        return (Linear(name=gate, in_features=self.hidden_size, out_features=self.intermediate_size, bias=self.bias),
                Linear(name=up, in_features=self.hidden_size, out_features=self.intermediate_size, bias=self.bias),
                down_linear)

    def parameters(self) -> int:
        return _sum_parts(self.linears())


FeedForward = Union[MLP, GatedMLP]


@dataclass(frozen=True, kw_only=True, slots=True)
class MixtureOfExperts:
    """Routed experts (experts_per_token of `experts` run for each token), optional shared experts, a router.

    `shared` is the shared expert block as one MLP (DeepSeek: n_shared_experts x moe_intermediate_size wide;
    Qwen2-MoE: shared_expert_intermediate_size), `shared_gate` Qwen2-MoE's sigmoid gate (hidden -> 1).
    """

    hidden_size: int
    experts: int
    experts_per_token: int
    expert: FeedForward
    shared: FeedForward | None = None
    shared_gate: bool = False
    router_bias: bool = False

    def router(self) -> Linear:
        return Linear(name="gate", in_features=self.hidden_size, out_features=self.experts, bias=self.router_bias)

    def routed_parameters(self) -> int:
        return self.experts * self.expert.parameters()

    def shared_parameters(self) -> int:
        shared = self.shared.parameters() if self.shared else 0
        return shared + (self.hidden_size if self.shared_gate else 0)

    def parameters(self) -> int:
        return self.routed_parameters() + self.shared_parameters() + self.router().parameters()

    def active_parameters(self) -> int:
        """What one token runs through: its experts_per_token routed experts, the shared ones, the router."""
        return (self.experts_per_token * self.expert.parameters() + self.shared_parameters()
                + self.router().parameters())


AttentionBlock = Union[Attention, LatentAttention]
FeedForwardBlock = Union[MLP, GatedMLP, MixtureOfExperts]


@dataclass(frozen=True, kw_only=True, slots=True)
class Layer:
    """One transformer block: self-attention, optional cross-attention (decoder of an encoder-decoder),
    a feed-forward block and its norms. `parallel` marks blocks where attention and MLP read the same input
    (GPT-J, GPT-NeoX, Falcon, Phi-2), which changes activations but not parameters."""

    attention: AttentionBlock
    mlp: FeedForwardBlock
    norms: tuple[Norm, ...]
    cross_attention: Attention | None = None
    parallel: bool = False

    def attention_parameters(self) -> int:
        cross = self.cross_attention.parameters() if self.cross_attention else 0
        return self.attention.parameters() + cross

    def norm_parameters(self) -> int:
        return _sum_parts(self.norms)

    def parameters(self) -> int:
        return self.attention_parameters() + self.mlp.parameters() + self.norm_parameters()

    def active_parameters(self) -> int:
        mlp = self.mlp.active_parameters() if isinstance(self.mlp, MixtureOfExperts) else self.mlp.parameters()
        return self.attention_parameters() + mlp + self.norm_parameters()


@dataclass(frozen=True, kw_only=True, slots=True)
class Stack:
    """A sequence of layers and the norm after them (None where the architecture has none)."""

    layers: tuple[Layer, ...]
    final_norm: Norm | None = None

    def groups(self) -> list[tuple[Layer, int]]:
        """Identical layers counted once: formulas run per distinct layer and multiply."""
        return list(_counted(self.layers))

    def parameters(self) -> int:
        final = self.final_norm.parameters() if self.final_norm else 0
        return sum(layer.parameters() * count for layer, count in self.groups()) + final


@dataclass(frozen=True, kw_only=True, slots=True)
class Embedding:
    """Token table plus what is added to it: learned positions (OPT stores 2 extra rows), token types
    (BERT), a norm after the sum (BERT, BLOOM), and OPT-350m's projections between embedding and model width."""

    tokens: Table
    positions: Table | None = None
    token_types: Table | None = None
    norm: Norm | None = None
    projections: tuple[Linear, ...] = ()

    def parameters(self) -> int:
        tables = [t for t in (self.tokens, self.positions, self.token_types) if t is not None]
        norms = (self.norm,) if self.norm else ()
        return _sum_parts(tables, norms, self.projections)


@dataclass(frozen=True, kw_only=True, slots=True)
class Head:
    """What turns hidden states into outputs.

    `output` is the projection to the vocabulary (or classes); when `tied` its weight is the token table and
    only its bias counts. `transform` holds layers before it (BERT's MLM dense + LayerNorm, a pooler).
    An encoder used as a bare backbone has `output=None`. `logit_softcap`: config.json's
    final_logit_softcapping (Gemma 2): the CausalLM computes logits / cap, tanh, * cap out of place
    (models/gemma2/modeling_gemma2.py Gemma2ForCausalLM.forward); None when the logits are not capped.
    `shifted_fp32_loss`: the model's own forward takes the loss on a shifted fp32 copy and casts the fp32 logits
    back to the model dtype before returning (ChatGLM2/3 and GLM-4 remote code, modeling_chatglm.py
    ChatGLMForConditionalGeneration.forward: `lm_logits.to(torch.float32)`, `lm_logits[..., :-1, :].contiguous()`,
    CrossEntropyLoss, `lm_logits.to(hidden_states.dtype)`); memory/activations.py shifted_fp32_loss counts it.
    """

    output: Linear | None
    tied: bool = False
    transform: tuple[Linear | Norm | Table, ...] = ()  # Table: a lone learned vector (BERT's untied MLM bias)
    logit_softcap: float | None = None
    shifted_fp32_loss: bool = False

    def parameters(self) -> int:
        transform = _sum_parts(self.transform)
        if self.output is None:
            return transform
        if self.tied:
            return transform + (self.output.out_features if self.output.bias else 0)
        return transform + self.output.parameters()


@dataclass(frozen=True, kw_only=True, slots=True)
class ParameterCount:
    """Exact counts: the total, the split by part, and what one token runs through (MoE)."""

    total: int
    active: int
    by_part: dict[str, int] = field(hash=False, compare=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Architecture:
    """A whole model. Decoder-only models have `decoder` only, encoder-only ones `encoder` only, T5 both.

    `model_type` and `class_name` say what it was read from (config.json's model_type and architectures[0]);
    no formula branches on them.
    """

    model_type: str
    class_name: str
    hidden_size: int
    vocab_size: int
    embedding: Embedding
    head: Head
    decoder: Stack | None = None
    encoder: Stack | None = None
    max_positions: int | None = None
    dtype: str | None = None  # torch_dtype / dtype of the stored weights, as config.json states it

    def stacks(self) -> tuple[Stack, ...]:
        return tuple(stack for stack in (self.encoder, self.decoder) if stack is not None)

    def layers(self) -> Iterator[Layer]:
        for stack in self.stacks():
            yield from stack.layers

    @property
    def num_layers(self) -> int:
        return sum(len(stack.layers) for stack in self.stacks())

    @property
    def is_moe(self) -> bool:
        return any(isinstance(layer.mlp, MixtureOfExperts) for layer in self.layers())

    def parameter_count(self) -> ParameterCount:
        """Counted once per architecture object (it is frozen; every estimate asks); each call gets its own
        by_part dict, so a caller that edits it changes nobody else's count."""
        count = _derived(self, self._parameter_count)
        return ParameterCount(total=count.total, active=count.active, by_part=dict(count.by_part))

    def _parameter_count(self) -> ParameterCount:
        parts = {"embeddings": self.embedding.parameters(), "attention": 0, "mlp": 0, "experts": 0,
                 "norms": 0, "head": self.head.parameters()}
        active = parts["embeddings"] + parts["head"]
        for stack in self.stacks():
            final_norm = stack.final_norm.parameters() if stack.final_norm else 0
            parts["norms"] += final_norm
            active += final_norm
            for layer, count in stack.groups():
                parts["attention"] += layer.attention_parameters() * count
                parts["mlp" if not isinstance(layer.mlp, MixtureOfExperts) else "experts"] += (
                    layer.mlp.parameters() * count)
                parts["norms"] += layer.norm_parameters() * count
                active += layer.active_parameters() * count
        return ParameterCount(total=sum(parts.values()), active=active, by_part=parts)


def _sum_parts(*groups: object) -> int:
    return sum(part.parameters() for group in groups for part in group)  # type: ignore[attr-defined]


# Equal layers are distinct objects (a reader builds each one), and a set or Counter of them hashes and
# compares every part of every layer: about 30 us for 32 layers, several times per estimate. The answer
# depends only on which layer objects are in the tuple, so it is kept per tuple of ids; each entry holds
# its layers, so the ids cannot be reused while it lives; the cache starts afresh beyond _MEMO_SIZE.
_COUNTED: dict[tuple[int, ...], tuple[tuple[Layer, ...], tuple[tuple[Layer, int], ...]]] = {}
_MEMO_SIZE = 256


def _counted(layers: tuple[Layer, ...]) -> tuple[tuple[Layer, int], ...]:
    key = tuple(map(id, layers))
    hit = _COUNTED.get(key)
    if hit is not None:
        return hit[1]
    counted = tuple(Counter(layers).items())
    put(_COUNTED, key, (layers, counted), _MEMO_SIZE)
    return counted


_T = TypeVar("_T")


def _derived(part: object, make: Callable[[], _T]) -> _T:
    """make() once per part object: parts and architectures are frozen, and the formulas ask for each layer's
    linears (building them is most of an activation count) and the parameter count again at every estimate. Keyed by id and the method's name; each
    entry holds its part, so the id is not reused while it lives; the cache starts afresh beyond _DERIVED_SIZE."""
    return held(_DERIVED, (id(part), make.__name__), part, make, _DERIVED_SIZE)


_DERIVED: dict[tuple[int, str], tuple[object, object]] = {}
_DERIVED_SIZE = 8192   # a few models' layers (405B: 126 layers x attention and MLP)


def layer_counts(layers: tuple[Layer, ...]) -> tuple[tuple[Layer, int], ...]:
    """Each distinct layer (by value) of `layers` with how many times it occurs, first occurrence first: a
    formula that is a sum over layers runs once per distinct layer and multiplies."""
    return _counted(tuple(layers))


def distinct_layers(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """The distinct layers (by value) of `layers`, first occurrence first: what set(layers) holds."""
    return tuple(layer for layer, _ in layer_counts(layers))
