"""ChatGLM remote code takes its loss inside the model's forward, on a shifted fp32 copy, and casts the fp32 logits
back to the model dtype (Head.shifted_fp32_loss, activations.shifted_fp32_loss).

The steps, as modeling_chatglm.py ChatGLMForConditionalGeneration.forward writes them (GLM-4 code of June 2024:
XuRui314/GLM4v-Finetune modeling_chatglm.py at 513b75de; ChatGLM3 code: THUDM/LongAlign modeling_chatglm.py):
    lm_logits = lm_logits.to(torch.float32)
    shift_logits = lm_logits[..., :-1, :].contiguous()
    loss = CrossEntropyLoss(ignore_index=-100)(shift_logits.view(-1, V), shift_labels.view(-1))
    lm_logits = lm_logits.to(hidden_states.dtype)
"""

from __future__ import annotations

from typing import Any

import pytest

from vramfit.memory import activations as act
from vramfit.model.hf_config import read_architecture

# THUDM/glm-4-9b-chat's shape fields (tests/test_parameters.py GLM_4_9B_CHAT), one layer.
GLM_4_ONE_LAYER: dict[str, Any] = {
    "model_type": "chatglm", "architectures": ["ChatGLMModel"], "add_bias_linear": False, "add_qkv_bias": True,
    "ffn_hidden_size": 13696, "hidden_size": 4096, "kv_channels": 128, "multi_query_attention": True,
    "multi_query_group_num": 2, "num_attention_heads": 32, "num_hidden_layers": 1, "num_layers": 1,
    "padded_vocab_size": 151552, "post_layer_norm": True, "rmsnorm": True, "seq_length": 131072,
    "tie_word_embeddings": False,
}


def test_chatglm_reader_marks_the_models_own_shifted_fp32_loss() -> None:
    assert read_architecture(GLM_4_ONE_LAYER).head.shifted_fp32_loss
    llama = read_architecture({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
                               "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
                               "vocab_size": 1000, "tie_word_embeddings": False})
    assert not llama.head.shifted_fp32_loss


def test_glm_4_loss_at_10240_tokens_by_hand() -> None:
    """The LLaMA-Factory #4772 case: one sequence of 10,240 tokens, vocabulary 151,552, bf16.
    T x V = 1,551,892,480; S x V = 10,239 x 151,552 = 1,551,740,928 (all multiples of 128, so 512-byte exact).
    At batch 1 the shifted slices (logits and labels) are already contiguous, so `.contiguous()` copies nothing.
    Forward's largest moment (the cast back): log-softmax 4SV saved, fp32 logits 4TV + bf16 cast 2TV transient =
    15,518,318,592 bytes (14.45 GiB); at batch 2 the shifted copy 4SV (of 2 x 10,239 rows) comes on top."""
    arch = read_architecture(GLM_4_ONE_LAYER)
    loss = act.loss_memory(arch, act.Shape(batch=1, seq=10240, compute_bytes=2), chunks=1, fp32_logits=False)
    tv, sv = 10240 * 151552, 10239 * 151552
    assert loss.saved == 4 * sv
    assert loss.forward_transient == 4 * tv + 2 * tv
    assert loss.backward_transient == 2 * 4 * sv
    assert loss.saved + loss.forward_transient == 15_518_318_592
    two = act.loss_memory(arch, act.Shape(batch=2, seq=10240, compute_bytes=2), chunks=1, fp32_logits=False)
    assert two.forward_transient == 2 * (4 * tv + 2 * tv) + 2 * 4 * sv


def _remote_code_loss(torch: Any, hidden: Any, weight: Any, labels: Any) -> Any:
    """The head and loss lines of ChatGLMForConditionalGeneration.forward, restated (batch-first GLM-4 layout)."""
    lm_logits = torch.nn.functional.linear(hidden, weight)
    lm_logits = lm_logits.to(torch.float32)
    shift_logits = lm_logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    loss = torch.nn.functional.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                                             ignore_index=-100)
    lm_logits = lm_logits.to(hidden.dtype)
    return loss.to(hidden.dtype), lm_logits


@pytest.mark.parametrize("batch", [1, 2])
def test_traced_remote_code_loss_matches_the_formula(batch: int) -> None:
    """Live storages counted while the remote code's lines run (truth/tracker.py): the forward's peak over what
    was live before (hidden states, head weight, labels) is saved + forward_transient, the backward's is saved +
    backward_transient, each up to a few 512-byte scalars (the loss, its bf16 cast, nll's total weight). Small
    sizes, CPU, ~0.1 s."""
    torch = pytest.importorskip("torch")
    from vramfit.truth.tracker import LiveTensorTracker

    seq, width, vocab = 256, 64, 8192
    config = {**GLM_4_ONE_LAYER, "hidden_size": width, "padded_vocab_size": vocab, "kv_channels": 16,
              "num_attention_heads": 4, "ffn_hidden_size": 128}
    formula = act.loss_memory(read_architecture(config), act.Shape(batch=batch, seq=seq, compute_bytes=2),
                              chunks=1, fp32_logits=False)
    with LiveTensorTracker() as tracker:
        hidden = torch.randn(batch, seq, width, dtype=torch.bfloat16).requires_grad_(True)
        weight = torch.randn(vocab, width, dtype=torch.bfloat16)
        labels = torch.randint(0, vocab, (batch, seq))
        before = tracker.current_bytes
        loss, logits = _remote_code_loss(torch, hidden, weight, labels)
        forward_peak = tracker.peak_bytes - before
        del logits
        tracker.reset_peak()
        loss.backward()
        backward_peak = tracker.peak_bytes - before
    expected = formula.saved + formula.forward_transient
    assert expected <= forward_peak <= expected + 4 * 512
    # backward: the two S x V x 4 gradients beside the saved log-softmax (above the forward at batch 1, where the
    # forward makes no shifted copy); the shifted labels (batch 2: 4 KiB) go with nll's backward, before the peak
    backward = formula.saved + formula.backward_transient
    assert abs(backward_peak - backward) <= 8 * 512
