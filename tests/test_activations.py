"""Saved activations by operator, checked against Korthikanti et al. 2022 and by hand."""

from __future__ import annotations

from vramfit.memory import activations as act
from vramfit.model.architecture import MLP, Attention, GatedMLP, Layer, Norm

H, A, S, B, I = 1024, 16, 512, 2, 4096
SBH = S * B * H


def _gpt3_block() -> Layer:
    return Layer(attention=Attention(hidden_size=H, heads=A, kv_heads=A, head_dim=H // A, qkv_bias=True),
                 mlp=MLP(hidden_size=H, intermediate_size=I, activation="gelu"),
                 norms=(Norm(name="ln_1", size=H, kind="layer", bias=True),
                        Norm(name="ln_2", size=H, kind="layer", bias=True)))


def test_korthikanti_34_sbh_with_fp32_softmax_in_eager_attention() -> None:
    """Korthikanti et al. 2022, eq. 1: sbh(34 + 5as/h) per block in 16-bit with dropout. Every sbh term is
    reproduced. transformers' eager attention runs the softmax in fp32 and casts back
    (`softmax(..., dtype=torch.float32).to(query.dtype)`), so the s² part is 4 + 2 (softmax and its cast)
    + 1 (dropout mask) + 2 (dropout output) = 9·a·s²·b bytes instead of 5; LayerNorm also keeps its mean and
    rstd (2 x T fp32 per norm), which the paper leaves out."""
    shape = act.Shape(batch=B, seq=S, compute_bytes=2, attention="eager", hidden_dropout=0.1,
                      attention_dropout=0.1)
    saved = act.layer_saved(_gpt3_block(), shape).total
    norm_stats = 2 * 2 * S * B * 4
    assert saved == 34 * SBH + 9 * A * S * S * B + norm_stats


def test_sdpa_drops_the_quadratic_term() -> None:
    eager = act.Shape(batch=B, seq=S, compute_bytes=2, attention="eager")
    sdpa = act.Shape(batch=B, seq=S, compute_bytes=2, attention="sdpa")
    block = _gpt3_block()
    difference = act.layer_saved(block, eager).total - act.layer_saved(block, sdpa).total
    # eager: k and v repeated (same size here), softmax fp32 + bf16 cast, separate output copy;
    # sdpa: the log-sum-exp (b x a x s fp32) instead
    assert difference == 6 * A * S * S * B - A * S * B * 4


def test_gated_mlp_saves_four_intermediate_tensors() -> None:
    shape = act.Shape(batch=B, seq=S, compute_bytes=2)
    assert act.feed_forward_saved(GatedMLP(hidden_size=H, intermediate_size=I), B * S, shape) == 4 * B * S * I * 2


def test_frozen_down_projection_does_not_save_its_input() -> None:
    """A linear whose weight does not train saves only the weight (derivatives.yaml: mm saves self for mat2's
    gradient): under LoRA without down_proj adapters the MLP product is not kept."""
    shape = act.Shape(batch=B, seq=S, compute_bytes=2, trains=False)
    assert act.feed_forward_saved(GatedMLP(hidden_size=H, intermediate_size=I), B * S, shape) == 3 * B * S * I * 2


def test_transformers_loss_peak_at_a_large_vocabulary() -> None:
    """Logits bf16 + their fp32 copy at the loss (forward), two fp32 gradients at the start of backward."""
    from vramfit.model.hf_config import read_architecture

    arch = read_architecture({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
                              "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
                              "vocab_size": 128256, "tie_word_embeddings": False})
    shape = act.Shape(batch=1, seq=1024, compute_bytes=2)
    loss = act.loss_memory(arch, shape, chunks=1, fp32_logits=False)
    assert loss.saved == 1024 * 128256 * 4 + 1024 * 8
    assert loss.forward_transient == 1024 * 128256 * (2 + 4)
    assert loss.backward_transient == 2 * 1024 * 128256 * 4
