"""FSDP1's flat root unit under litgpt (Framework.fsdp_flat_root), against hand derivations.

Source: torch/distributed/fsdp/_flat_param.py runs the forward on `torch.split` views of the unsharded flat
parameter (`_use_unsharded_views(as_params=False)`), so the root unit's gradient (embedding, final norm and
head, one flat parameter when only the blocks are wrapped: litgpt's FSDPStrategy(auto_wrap_policy={Block}))
comes from one split backward: the head's gradient waits in it from the loss through every block's backward,
and after the embedding's backward the node concatenates all of them into a new flat-sized tensor.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from by_hand import round512

from vramfit import estimate
from vramfit.memory import frameworks
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import Settings

VOCAB, HIDDEN = 32000, 1024
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
         "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
         "vocab_size": VOCAB, "max_position_embeddings": 4096, "tie_word_embeddings": False}
FULL_FSDP = Settings().replace(mode="training", finetune="full", framework="litgpt", gpus=4, fsdp="full",
                               grad_ckpt="full", batch_size=1, seq_len=512, dtype="bf16", grad_accum=4)


def _model() -> Model:
    return Model(name="tiny", architecture=read_architecture(LLAMA), source="config", config=LLAMA)


# Hand derivation, bf16 gradients: the root's trainable tensors are the embedding (V x h), the final norm (h)
# and the head (V x h). Head's gradient: round512(V h 2) + round512(h 2); embedding's: round512(V h 2).
HEAD_GRAD = round512(VOCAB * HIDDEN * 2) + round512(HIDDEN * 2)
ROOT_GRAD = HEAD_GRAD + round512(VOCAB * HIDDEN * 2)


def _phases(settings: Settings) -> dict[str, int]:
    return estimate(_model(), settings).extra["phases"]


def test_end_of_backward_holds_head_embedding_and_their_concatenation() -> None:
    result = estimate(_model(), FULL_FSDP)
    assert result.extra["peak_phase"] == "backward_end"
    assert result.memory["fsdp_root_gradients"] == 2 * ROOT_GRAD   # (head + embedding) + the flat concatenation


def test_while_accumulating_the_blocks_phases_carry_the_waiting_head_gradient(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with_root = _phases(FULL_FSDP)
    monkeypatch.setitem(frameworks.PROFILES, "litgpt", replace(frameworks.LITGPT, fsdp_flat_root=False))
    without = _phases(FULL_FSDP)
    assert "backward_end" not in without
    blocks = [name for name in without if name.startswith("backward_block_")]
    assert blocks and all(with_root[name] - without[name] == HEAD_GRAD for name in blocks)
    assert with_root["forward"] == without["forward"]


def test_at_the_sync_step_only_the_unsharded_excess_waits_and_the_roots_shard_is_not_yet_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sync = FULL_FSDP.replace(grad_accum=1)
    with_root = _phases(sync)
    monkeypatch.setitem(frameworks.PROFILES, "litgpt", replace(frameworks.LITGPT, fsdp_flat_root=False))
    without = _phases(sync)
    head_shard = HEAD_GRAD // 4    # the walk already counts the head's kept shard (grad_shard 4)
    blocks = [name for name in without if name.startswith("backward_block_")]
    assert all(with_root[name] - without[name] == HEAD_GRAD - head_shard for name in blocks)
    live = estimate(_model(), sync)
    if live.extra["peak_phase"] == "backward_end":
        assert live.memory["fsdp_root_gradients"] == 2 * ROOT_GRAD


@pytest.mark.parametrize("change", [
    {"framework": "transformers"},       # accelerate / FSDP2-style: no flat root modelled
    {"finetune": "lora"},                # the root is frozen: no gradient
    {"gpus": 1, "fsdp": "none"},         # no FSDP
])
def test_only_fsdp1_full_fine_tuning_with_a_trainable_root_has_it(change: dict[str, object]) -> None:
    result = estimate(_model(), FULL_FSDP.replace(**change))
    assert "backward_end" not in result.extra["phases"]
    assert all(component.name != "fsdp_root_gradients" for component in result.memory.components)
