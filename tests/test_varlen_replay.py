"""The mechanism bench/varlen_reserved.py relies on: the caching allocator's pool grows over steps whose tensors change
size (a freed block of one length cannot serve a longer request), and the script's own pieces (the GLM-4-9B stand-in,
the remote code's loss at batch 1, the per-step replay) on tiny models. Fake or tiny CPU tensors; no network."""

from __future__ import annotations

from typing import Any

import pytest
from bench_scripts import load_bench

from vramfit.truth.allocator import Event, replay

MiB = 1 << 20


def step(key: int, tokens: int) -> list[Event]:
    """A toy step of `tokens` tokens: a 4-byte and a 2-byte tensor of tokens MiB each (like fp32 and bf16 logits of
    a 1 Mi-entry vocabulary), alive together, then freed."""
    return [Event(key=key, nbytes=4 * tokens * MiB, allocate=True), Event(key=key + 1, nbytes=2 * tokens * MiB, allocate=True),
            Event(key=key, nbytes=0, allocate=False), Event(key=key + 1, nbytes=0, allocate=False)]


def test_a_longer_step_cannot_reuse_a_shorter_steps_blocks() -> None:
    """By hand (truth/allocator.py rules 3-5): every request here is >= 10 MiB and a multiple of 2 MiB, so it gets
    a segment of exactly its size when no free block fits.
    - 10 tokens alone: 40 + 20 MiB segments = 60 MiB.
    - 10 then 16: 64 MiB fits no free block (40, 20): a new 64 MiB segment; 32 MiB takes the 40 MiB block (best
      fit; the 8 MiB rest is split off). Reserved 40 + 20 + 64 = 124 MiB, where 16 tokens alone reserve 96.
    - 16 then 10: 40 MiB is carved from the free 64 MiB block, 20 MiB from its 24 MiB rest: nothing new, 96 MiB."""
    assert replay(step(0, 10)).peak_reserved_bytes == 60 * MiB
    assert replay(step(0, 16)).peak_reserved_bytes == 96 * MiB
    increasing = replay(step(0, 10) + step(2, 16))
    assert (increasing.peak_allocated_bytes, increasing.peak_reserved_bytes) == (96 * MiB, 124 * MiB)
    assert replay(step(0, 16) + step(2, 10)).peak_reserved_bytes == 96 * MiB


def test_the_same_length_again_reuses_every_block() -> None:
    assert replay(step(0, 16) + step(2, 16) + step(4, 16)).peak_reserved_bytes == 96 * MiB


def bench() -> Any:
    return load_bench("varlen_reserved")


def test_the_stand_in_has_glm_4_9b_chats_parameters() -> None:
    """GlmForCausalLM built from the catalog's chatglm config.json (on the meta device) has exactly the parameters
    vramfit counts for THUDM/glm-4-9b-chat (9,399,951,360)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vramfit import load_model

    model = load_model("THUDM/glm-4-9b-chat")
    with torch.device("meta"):
        glm = transformers.GlmForCausalLM(bench().glm4_config(model.config))
    assert sum(p.numel() for p in glm.parameters()) == model.architecture.parameter_count().total == 9_399_951_360


@pytest.mark.parametrize(("batch", "copies"), [(1, 0), (2, 1)])
def test_remote_code_loss_makes_its_shifted_copy_only_above_batch_1(batch: int, copies: int) -> None:
    """`lm_logits[..., :-1, :].contiguous()` on (batch, T, V) logits: at batch 1 dropping the last row leaves the
    tensor contiguous, so no copy is made. Live bytes at the forward's peak, over the bf16 logits passed in, counted
    by the tracker on real CPU tensors: fp32 logits 4BTV + log-softmax 4BSV (saved) + bf16 cast back 2BTV, and the
    shifted copy 4BSV only at batch 2 (plus a few 512-byte scalars)."""
    torch = pytest.importorskip("torch")
    from vramfit.truth.tracker import LiveTensorTracker

    seq, vocab = 256, 4096    # every tensor a multiple of 512 bytes
    logits = torch.randn(batch, seq, vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.zeros(batch, seq, dtype=torch.long)
    with LiveTensorTracker() as tracker:
        tracker.mark([logits, labels], "inputs")
        tracker.reset_peak()
        base = tracker.current_bytes
        bench().remote_code_loss(torch, logits, labels)
    tv, sv = batch * seq * vocab, batch * (seq - 1) * vocab
    expected = 4 * tv + 4 * sv + 2 * tv + copies * 4 * sv
    assert 0 <= tracker.peak_bytes - base - expected <= 8 * 512 + 8 * batch * seq


TINY = {"padded_vocab_size": 8192, "hidden_size": 64, "ffn_hidden_size": 128, "num_layers": 2, "num_attention_heads": 4,
        "multi_query_group_num": 2, "kv_channels": 16, "add_qkv_bias": True, "layernorm_epsilon": 1e-5,
        "tie_word_embeddings": False, "seq_length": 4096, "rope_ratio": 1, "pad_token_id": 0}


def traced_reserved(lengths: list[int]) -> tuple[int, int, int]:
    """The bench's own trace and per-step replay of a tiny GLM-shaped model over these sample lengths: the tracker's
    peak, and the replay's allocated and reserved peaks."""
    module = bench()
    settings, _ = module.row_settings()
    tracker, ends = module.trace_run(module.glm4_config(TINY), settings, lengths)
    _, marks = module.replay_steps(tracker, ends, None)
    assert len(marks) == len(lengths)
    assert marks[-1]["requested"] == tracker.peak_bytes     # the replay peaks where the tracker does
    return tracker.peak_bytes, marks[-1]["allocated"], marks[-1]["reserved"]


def test_traced_steps_of_two_lengths_reserve_more_than_either_length_repeated() -> None:
    """The tiny model's logits (fp32: 4 x T x 8192 bytes, 32 MiB at T = 1024) get segments of their own. A short
    then a long sample reserve more than two long ones, whose second step reuses the first one's blocks; a long then
    a short one reserve no more than the long one alone (the short sample's tensors are carved from its blocks)."""
    pytest.importorskip("peft")
    _, _, short = traced_reserved([1024, 1024])
    _, long_allocated, long = traced_reserved([2048, 2048])
    _, mixed_allocated, mixed = traced_reserved([1024, 2048])
    assert traced_reserved([2048])[2] == long                  # the same length again adds nothing
    assert traced_reserved([2048, 1024])[2] == long            # nor does a shorter one after it
    assert mixed_allocated == long_allocated                    # the same live peak (the long sample's) ...
    assert mixed > long > short                                 # ... in a larger pool
