"""A model described only by its numbers, as textbooks do: `--params 7B`, with any dimensions the user knows.

Unstated dimensions are filled with a standard Llama-style decoder (Touvron et al. 2023, "LLaMA: Open and
Efficient Foundation Language Models", table 2; code: facebookresearch/llama, llama/model.py):

- pre-norm blocks with two RMSNorms, multi-head attention without biases, a SwiGLU MLP, a final RMSNorm, an
  untied lm_head;
- head_dim 128, so heads = hidden_size / 128 (every LLaMA and Llama 2 size);
- kv_heads = heads (multi-head attention, as LLaMA 1 and the smaller Llama 2 models);
- hidden_size = 128 x layers: LLaMA-7B 4096/32, LLaMA-13B 5120/40, Llama-3.2-1B 2048/16 (the larger models
  run slightly deeper per width, 33B 6656/60, 65B 8192/80; 128 is the common ratio);
- intermediate_size: the count the user stated leaves one unknown, so the MLP width is solved to make the total
  match it; llama/model.py's own rule, int(8/3 x hidden) rounded up to a multiple of 256 (11008 for 4096),
  picks the layer count, and the notes show both;
- vocab_size 32000, the LLaMA and Llama 2 tokenizer.

Layers (and so hidden_size) are the count whose standard shape lands closest to `params`. LLaMA-7B's shape
(32 layers of 4096) has 6,738,415,616 parameters; `--params 7B` therefore gets those 32 layers and an MLP of
11673 so that the total is 7.00B, the number the user gave. Every filled-in value is listed in `Model.assumed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramfit.errors import InvalidSetting
from vramfit.model.architecture import (
    Architecture,
    Attention,
    Embedding,
    GatedMLP,
    Head,
    Layer,
    Linear,
    Norm,
    Stack,
    Table,
)
from vramfit.model.loaded import Model
from vramfit.model.readers.fields import MAX_LAYERS as MAX_STATED_LAYERS
from vramfit.units import format_count

__all__ = ["decoder", "model_from_numbers", "swiglu_intermediate"]

HEAD_DIM = 128
WIDTH_PER_LAYER = 128
VOCAB_SIZE = 32000
MULTIPLE_OF = 256
MAX_LAYERS = 1024
LLAMA_STYLE_NOTE = ("assumed a Llama-style decoder (RMSNorm, SwiGLU MLP, no biases, untied lm_head) for the "
                    "dimensions not given")
MISMATCH_NOTE = 0.005  # stated dimensions whose count is further than 0.5% from --params get a note


@dataclass(frozen=True, kw_only=True, slots=True)
class Shape:
    """The dimensions of a Llama-style decoder."""

    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int


def swiglu_intermediate(hidden_size: int) -> int:
    """llama/model.py FeedForward: 4h, times 2/3 for the third (gate) matrix, rounded up to a multiple of 256."""
    width = int(2 * (4 * hidden_size) / 3)
    return MULTIPLE_OF * ((width + MULTIPLE_OF - 1) // MULTIPLE_OF)


def decoder(shape: Shape) -> Architecture:
    """The Architecture of a Llama-style decoder of this shape (LlamaForCausalLM's module names)."""
    h = shape.hidden_size
    layer = Layer(attention=Attention(hidden_size=h, heads=shape.heads, kv_heads=shape.kv_heads,
                                      head_dim=h // shape.heads),
                  mlp=GatedMLP(hidden_size=h, intermediate_size=shape.intermediate_size),
                  norms=(Norm(name="input_layernorm", size=h), Norm(name="post_attention_layernorm", size=h)))
    return Architecture(
        model_type="llama", class_name="LlamaForCausalLM", hidden_size=h, vocab_size=shape.vocab_size,
        embedding=Embedding(tokens=Table(name="embed_tokens", rows=shape.vocab_size, dim=h)),
        head=Head(output=Linear(name="lm_head", in_features=h, out_features=shape.vocab_size)),
        decoder=Stack(layers=(layer,) * shape.layers, final_norm=Norm(name="norm", size=h)))


def _count_without_mlp(h: int, layers: int, heads: int, kv_heads: int, vocab: int) -> int:
    """Embedding + lm_head (2Vh) + final norm (h) + per layer: q and o (2h^2), k and v (2h * kv/heads * h),
    two norms (2h). Same sum as `decoder(...).parameter_count()`, in closed form for the solver."""
    attention = 2 * h * h + 2 * h * (kv_heads * (h // heads))
    return 2 * vocab * h + h + layers * (attention + 2 * h)


def _mlp_per_layer(h: int, intermediate: int) -> int:
    return 3 * h * intermediate


def model_from_numbers(params: int, *, hidden_size: int | None = None, layers: int | None = None,
                       heads: int | None = None, kv_heads: int | None = None,
                       intermediate_size: int | None = None, vocab_size: int | None = None) -> Model:
    """A Llama-style decoder with about `params` parameters; stated dimensions are kept, the others filled
    in by the rules in this module's docstring and listed in `Model.assumed`."""
    _check_positive(params=params, hidden_size=hidden_size, layers=layers, heads=heads, kv_heads=kv_heads,
                    intermediate_size=intermediate_size, vocab_size=vocab_size)
    notes: list[str] = [LLAMA_STYLE_NOTE]
    vocab = vocab_size or VOCAB_SIZE
    if vocab_size is None:
        notes.append(f"assumed vocab_size={VOCAB_SIZE} (the LLaMA and Llama 2 tokenizer)")
    if hidden_size is None and heads is not None:
        hidden_size = HEAD_DIM * heads
        notes.append(f"assumed hidden_size={hidden_size} (heads x head_dim 128)")
    h, n_layers = _width_and_depth(params, hidden_size, layers, heads, kv_heads, intermediate_size, vocab, notes)
    n_heads = heads or _default_heads(h, notes)
    n_kv = kv_heads or n_heads
    if kv_heads is None:
        notes.append(f"assumed kv_heads={n_kv} (multi-head attention: kv_heads = heads)")
    _check_divides(h, n_heads, n_kv)
    inter = intermediate_size or _solve_intermediate(params, h, n_layers, n_heads, n_kv, vocab, notes)
    shape = Shape(hidden_size=h, layers=n_layers, heads=n_heads, kv_heads=n_kv, intermediate_size=inter,
                  vocab_size=vocab)
    architecture = decoder(shape)
    _note_mismatch(params, architecture.parameter_count().total, notes)
    return Model(name=f"{format_count(params)} decoder (by numbers)", architecture=architecture,
                 source="numbers", assumed=tuple(notes))


def _width_and_depth(params: int, hidden: int | None, layers: int | None, heads: int | None,
                     kv_heads: int | None, intermediate: int | None, vocab: int, notes: list[str]) -> tuple[int, int]:
    """hidden_size and layers: as stated, else the standard shape (hidden = 128 x layers) closest to params."""
    if hidden is not None and layers is not None:
        return hidden, layers

    def total(h: int, n: int) -> int:
        n_heads = heads or max(h // HEAD_DIM, 1)
        kv = kv_heads or n_heads
        mlp = _mlp_per_layer(h, intermediate or swiglu_intermediate(h))
        return _count_without_mlp(h, n, n_heads, min(kv, n_heads), vocab) + n * mlp

    if hidden is not None:
        candidates = [(hidden, n) for n in range(1, MAX_LAYERS + 1)]
    elif layers is not None:
        candidates = [(WIDTH_PER_LAYER * k, layers) for k in range(1, MAX_LAYERS + 1)]
    else:
        candidates = [(WIDTH_PER_LAYER * n, n) for n in range(1, MAX_LAYERS + 1)]
    h, n = min(candidates, key=lambda c: abs(total(*c) - params))
    notes.append(_shape_note(params, h, n, stated_hidden=hidden is not None, stated_layers=layers is not None))
    return h, n


def _shape_note(params: int, h: int, n: int, *, stated_hidden: bool, stated_layers: bool) -> str:
    target = f"the count closest to {format_count(params)}"
    if stated_hidden:
        return f"assumed layers={n} ({target} at hidden_size={h})"
    if stated_layers:
        return f"assumed hidden_size={h} (a multiple of 128, {target} at layers={n})"
    return (f"assumed layers={n} and hidden_size={h} (standard decoder shape for {format_count(params)}: "
            "hidden_size = 128 x layers, as LLaMA-7B 4096/32 and LLaMA-13B 5120/40)")


def _default_heads(h: int, notes: list[str]) -> int:
    if h % HEAD_DIM:
        raise InvalidSetting(f"--heads: hidden size {h} is not a multiple of the standard head_dim 128; "
                             "pass --heads so that it divides the hidden size")
    notes.append(f"assumed heads={h // HEAD_DIM} (head_dim 128)")
    return h // HEAD_DIM


def _solve_intermediate(params: int, h: int, layers: int, heads: int, kv_heads: int, vocab: int,
                        notes: list[str]) -> int:
    """The SwiGLU width that brings the total closest to params: (params - rest) / (3 h layers)."""
    rest = _count_without_mlp(h, layers, heads, kv_heads, vocab)
    width = round((params - rest) / (3 * h * layers))
    if width < 1:
        raise InvalidSetting(f"--params: {format_count(params)} is less than the embeddings, attention and norms "
                             f"of the shape alone ({rest:,}); raise --params or give smaller dimensions")
    notes.append(f"assumed intermediate_size={width} (SwiGLU width that makes the total {format_count(params)}; "
                 f"LLaMA's rule 8/3 x hidden rounded to 256 gives {swiglu_intermediate(h)})")
    return width


def _note_mismatch(params: int, total: int, notes: list[str]) -> None:
    if abs(total - params) > MISMATCH_NOTE * params:
        notes.append(f"the dimensions give {total:,} parameters, {100 * (total - params) / params:+.1f}% from "
                     f"--params {format_count(params)}; estimates use {total:,}")


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            flag = "--" + name.replace("_", "-")
            raise InvalidSetting(f"{flag}: must be a positive integer, got {value!r}")
    layers = values.get("layers")
    if layers is not None and layers > MAX_STATED_LAYERS:
        raise InvalidSetting(f"--layers: {layers:,} is more than {MAX_STATED_LAYERS:,} layers, beyond any published "
                             "model; pass a real layer count")


def _check_divides(h: int, heads: int, kv_heads: int) -> None:
    if h % heads:
        raise InvalidSetting(f"--heads: {heads} does not divide hidden size {h}; pass a head count that does")
    if heads % kv_heads:
        raise InvalidSetting(f"--kv-heads: {kv_heads} does not divide --heads {heads}; pass a divisor of it")
