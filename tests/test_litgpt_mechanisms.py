"""litgpt's own memory mechanisms, each checked against a hand derivation (the sources are cited in
vramfit/memory/frameworks.py and docs/PUBLISHED-TRAINING-ROWS.md, section C):

1. fp32_output: Lightning Fabric's precision plugin casts the model's output to torch.get_default_dtype()
   (HalfPrecision.convert_output, lightning/fabric/plugins/precision/half.py at 71aed751 and at HEAD), so
   the loop keeps fp32 logit chunks and the chunked cross-entropy saves an fp32 log_softmax.
2. qkv_view: litgpt's CausalSelfAttention hands SDPA a v that is a view of the fused qkv output (multi-head
   attention only); SDPA saves v, so the whole qkv output stays alive beside the q and k copies.
3. qkv_lora: LoRAQKVLinear applies one lora_dropout for q, k and v, and zero_pad's index_copy saves its
   source (tokens x the adapted widths) when not all three are adapted.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from vramfit import estimate
from vramfit.memory import activations as act
from vramfit.memory import frameworks, training
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import LoRA, Settings

HIDDEN, LAYERS, VOCAB, RANK = 1024, 4, 32000, 8
MHA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
       "intermediate_size": 2816, "num_hidden_layers": LAYERS, "num_attention_heads": 8, "num_key_value_heads": 8,
       "vocab_size": VOCAB, "max_position_embeddings": 4096, "tie_word_embeddings": False}
GQA = {**MHA, "num_key_value_heads": 2}
BATCH, SEQ = 2, 256
T = BATCH * SEQ
QV = LoRA(rank=RANK, alpha=16, dropout=0.05, targets=("q_proj", "v_proj"))
LITGPT_LORA = Settings().replace(mode="training", batch_size=BATCH, seq_len=SEQ, dtype="bf16", finetune="lora",
                                 lora=QV, framework="litgpt")
NONE_OF_THEM = replace(frameworks.LITGPT, fp32_output=False, qkv_view=False, qkv_lora=False)


def _model(config: dict[str, object]) -> Model:
    return Model(name="tiny", architecture=read_architecture(config), source="config", config=config)


def _shape(**flags: bool) -> act.Shape:
    lora = {"q_proj": (RANK, 2, True), "v_proj": (RANK, 2, True)}
    return act.Shape(batch=BATCH, seq=SEQ, compute_bytes=2, trains=False, native_activations=True,
                     expand_kv=True, lora=lora, **flags)


def test_fabric_output_cast_keeps_fp32_logits_and_an_fp32_log_softmax() -> None:
    """convert_output: every logit chunk becomes fp32, kept by the loop through backward (T x V x 4), and
    cross_entropy's log_softmax on it saves T x V x 4; the labels (int64) as before."""
    arch = read_architecture(MHA)
    shape = _shape()
    cast = training._loss(arch, shape, frameworks.LITGPT)
    bf16 = training._loss(arch, shape, NONE_OF_THEM)
    labels = act._t(T, 8)
    assert cast.saved == 2 * act._t(T * VOCAB, 4) + labels
    assert bf16.saved == 2 * act._t(T * VOCAB, 2) + labels
    assert cast.backward_transient == 2 * act._t(-(-T // 8) * VOCAB, 4)   # two fp32 gradients of one chunk


def test_multi_head_attention_keeps_the_fused_qkv_output_through_v() -> None:
    """SDPA saves q and k (rotary's torch.cat copies), v (a view: the whole T x 3h qkv output) and its output:
    the view adds q|k|v - v = 2 x T x h x 2 bytes over a v of its own."""
    layer = read_architecture(MHA).decoder.layers[0]       # type: ignore[union-attr]
    kept = act.attention_saved(layer.attention, _shape(qkv_view=True))
    own = act.attention_saved(layer.attention, _shape())
    assert kept - own == act._t(T * 3 * HIDDEN, 2) - act._t(T * HIDDEN, 2)


def test_grouped_query_attention_copies_k_and_v_so_nothing_keeps_the_fused_output() -> None:
    """With fewer kv heads, litgpt expands k and v and reshape copies them: no view of the qkv output is saved."""
    layer = read_architecture(GQA).decoder.layers[0]       # type: ignore[union-attr]
    assert act.attention_saved(layer.attention, _shape(qkv_view=True)) == act.attention_saved(layer.attention,
                                                                                               _shape())


def test_lora_on_q_and_v_is_one_dropout_and_a_saved_index_copy_source() -> None:
    """PEFT-style (one module per projection): two dropout outputs and masks, two T x r. LoRAQKVLinear: one
    dropout output (T x h x 2) and mask (T x h x 1), lora_A's output T x 2r, and index_copy's source: lora_B's
    output over the adapted q and v columns, T x (h + h) x 2 for multi-head attention."""
    layer = read_architecture(MHA).decoder.layers[0]       # type: ignore[union-attr]
    fused = act.layer_saved(layer, _shape(qkv_lora=True)).parts["linear_inputs"]
    separate = act.layer_saved(layer, _shape()).parts["linear_inputs"]
    one_dropout = act._t(T * HIDDEN, 2) + act._t(T * HIDDEN, 1)
    assert separate == 2 * one_dropout + 2 * act._t(T * RANK, 2)
    assert fused == one_dropout + act._t(T * 2 * RANK, 2) + act._t(T * 2 * HIDDEN, 2)


def test_lora_on_q_k_and_v_needs_no_zero_pad() -> None:
    """zero_pad returns lora_B's output as it is when all of q, k, v are adapted: no index_copy, no source."""
    layer = read_architecture(MHA).decoder.layers[0]       # type: ignore[union-attr]
    lora = {name: (RANK, 2, True) for name in ("q_proj", "k_proj", "v_proj")}
    shape = replace(_shape(qkv_lora=True), lora=lora)
    one_dropout = act._t(T * HIDDEN, 2) + act._t(T * HIDDEN, 1)
    assert act.layer_saved(layer, shape).parts["linear_inputs"] == one_dropout + act._t(T * 3 * RANK, 2)


def test_the_litgpt_plan_applies_all_three(monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate with the litgpt profile saves, at the start of backward, every block's two extras and
    the fp32 loss on top of the same profile without them."""
    model = _model(MHA)
    with_them = estimate(model, LITGPT_LORA)
    monkeypatch.setitem(frameworks.PROFILES, "litgpt", NONE_OF_THEM)
    without = estimate(model, LITGPT_LORA)
    assert with_them.extra["peak_phase"] == without.extra["peak_phase"] == "backward_start"
    one_dropout = act._t(T * HIDDEN, 2) + act._t(T * HIDDEN, 1)
    per_block = (2 * act._t(T * HIDDEN, 2)                                  # qkv output kept by v
                 + act._t(T * 2 * HIDDEN, 2) - one_dropout)                 # index_copy source, one dropout less
    loss = 2 * act._t(T * VOCAB, 4) - 2 * act._t(T * VOCAB, 2)              # fp32 logits and log_softmax
    assert with_them.memory["activations"] - without.memory["activations"] == LAYERS * per_block + loss


def test_the_loop_keeps_the_logits_through_the_blocks_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """finetune/lora.py keeps `logits` (Fabric's fp32 copies, T x V x 4) referenced until the next forward: with
    checkpointed blocks the peak is inside the blocks' backward, and the logits are still there."""
    small_vocab = 4096   # so that a recomputed block, not the loss, sets the peak
    model = _model({**MHA, "vocab_size": small_vocab})
    checkpointed = LITGPT_LORA.replace(grad_ckpt="full")
    kept = estimate(model, checkpointed)
    monkeypatch.setitem(frameworks.PROFILES, "litgpt", replace(frameworks.LITGPT, logits_kept=False))
    dropped = estimate(model, checkpointed)
    assert kept.extra["peak_phase"] == dropped.extra["peak_phase"]
    assert kept.extra["peak_phase"].startswith("backward_block_")
    assert kept.memory["activations"] - dropped.memory["activations"] == act._t(T * small_vocab, 4)


def test_the_kept_logits_are_alive_at_the_optimizer_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """optimizer.step() runs while `logits` is still the loop's variable: full fine-tuning, whose peak is the
    optimizer step, holds the fp32 logits (T x V x 4) there too."""
    model = _model(MHA)
    full = LITGPT_LORA.replace(finetune="full", seq_len=64)
    kept = estimate(model, full)
    monkeypatch.setitem(frameworks.PROFILES, "litgpt", replace(frameworks.LITGPT, logits_kept=False))
    dropped = estimate(model, full)
    assert kept.extra["peak_phase"] == dropped.extra["peak_phase"] == "optimizer_step"
    assert dropped.memory["activations"] == 0   # [] sums the components of that name: none here
    assert kept.memory["activations"] == act._t(BATCH * 64 * VOCAB, 4)
