"""Parallel layouts: what each divides, the buffers it adds, and the settings it refuses."""

from __future__ import annotations

import pytest

from vramfit import estimate
from vramfit.errors import InvalidSetting
from vramfit.memory.parallel import layout, stage_blocks
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import Parallelism, Settings, Workload

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
         "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8,
         "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False}
MODEL = Model(name="llama-tiny", architecture=read_architecture(LLAMA), source="config", config=LLAMA)
TRAIN = Settings().replace(mode="training", batch_size=2, seq_len=1024, dtype="bf16")


def _memory(**changes: object) -> dict[str, int]:
    return estimate(MODEL, TRAIN.replace(**changes)).memory.as_dict()


def test_zero_stages_shard_states_then_gradients_then_parameters() -> None:
    stages = [layout(Parallelism(gpus=8, zero_stage=z), Workload()) for z in (0, 1, 2, 3)]
    assert [(s.state_shard, s.grad_shard, s.param_shard) for s in stages] == [
        (1, 1, 1), (8, 1, 1), (8, 8, 1), (8, 8, 8)]


def test_fsdp_strategies_map_to_zero_stages() -> None:
    full = layout(Parallelism(gpus=16, fsdp="full"), Workload())
    grad_op = layout(Parallelism(gpus=16, fsdp="shard-grad-op"), Workload())
    hybrid = layout(Parallelism(gpus=16, fsdp="hybrid"), Workload())
    assert (full.param_shard, grad_op.param_shard, grad_op.grad_shard, hybrid.param_shard) == (16, 1, 16, 8)


def test_ddp_adds_a_bucket_copy_of_the_gradients() -> None:
    memory = _memory(gpus=2, optimizer="adamw", batch_size=1, seq_len=128)  # peak at the optimizer step
    assert memory["ddp_gradient_buckets"] == memory["gradients"] > 0


def test_higher_zero_stage_never_adds_memory() -> None:
    """What ZeRO shards only shrinks with the stage. DeepSpeed's reduce bucket, a fixed buffer that a model this
    small outweighs (tests/test_multi_gpu_buffers.py), is one element here so that the sharding is compared; so is
    ZeRO-3's stage3_max_live_parameters, under whose default (1e9 elements) a model this small stays gathered whole
    (tests/test_deepspeed_gathered.py)."""
    deepspeed = {0: {}, 1: {"zero_bucket": 1}, 2: {"zero_bucket": 1}, 3: {"zero_bucket": 1, "zero_live": 1}}
    peaks = [estimate(MODEL, TRAIN.replace(gpus=8, zero_stage=z, **deepspeed[z])).peak.allocated for z in (0, 1, 2, 3)]
    assert peaks == sorted(peaks, reverse=True)
    assert peaks[3] < peaks[0]


def test_fsdp_keeps_the_root_and_at_most_two_gathered_blocks() -> None:
    """FSDP: the root unit (embedding, head, final norm) and the block computed, with the next one prefetched
    inside a block's backward; at the peak of this setup (backward's start) the root and one block."""
    memory = _memory(gpus=8, fsdp="full")
    block = MODEL.architecture.decoder.layers[0].parameters() * 2  # type: ignore[union-attr]
    root = 2 * 32000 * 1024 * 2 + 1024 * 2
    assert memory["gathered_parameters"] - root == pytest.approx(block, rel=0.01)


def test_pipeline_first_stage_holds_micro_batches_in_flight() -> None:
    assert layout(Parallelism(gpus=4, pipeline=4), Workload(grad_accum=8)).in_flight == 4
    assert layout(Parallelism(gpus=4, pipeline=4), Workload(grad_accum=2)).in_flight == 2
    assert [len(r) for r in stage_blocks(10, 4)] == [3, 3, 2, 2]


def test_tensor_parallel_divides_weights_and_activations() -> None:
    one, two = _memory(), _memory(gpus=2, tensor=2)
    assert two["weights"] < 0.6 * one["weights"]


def test_optimizer_offload_reports_host_memory() -> None:
    result = estimate(MODEL, TRAIN.replace(gpus=2, zero_stage=2, offload="optimizer"))
    assert "optimizer_states" not in result.memory.as_dict()
    assert result.extra["host_memory"]["optimizer_states"] > 0


def test_zero_and_fsdp_together_are_refused() -> None:
    with pytest.raises(InvalidSetting, match="pass either --zero or --fsdp"):
        estimate(MODEL, TRAIN.replace(gpus=2, zero_stage=2, fsdp="full"))


def test_parameter_offload_needs_sharded_parameters() -> None:
    with pytest.raises(InvalidSetting, match="--zero 3 or --fsdp full"):
        estimate(MODEL, TRAIN.replace(gpus=2, offload="params"))


def test_tensor_parallel_must_divide_the_heads() -> None:
    with pytest.raises(InvalidSetting, match="choose --tp dividing the number of heads"):
        estimate(MODEL, TRAIN.replace(gpus=3, tensor=3))


def test_fsdp1_units_mixing_frozen_and_trained_weights_keep_all_their_gradients() -> None:
    """litgpt wraps whole blocks with FSDP1 (use_orig_params=True): per PyTorch's FSDP docs a unit mixing
    frozen and trainable parameters uses gradient memory as if none were frozen (litgpt issue #1417)."""
    lora = TRAIN.replace(gpus=2, fsdp="full", finetune="lora", optimizer="adamw", batch_size=1, seq_len=64)
    litgpt = estimate(MODEL, lora.replace(framework="litgpt")).extra["phases"]["optimizer_step"]
    torchtune = estimate(MODEL, lora.replace(framework="torchtune")).extra["phases"]["optimizer_step"]
    blocks = sum(layer.parameters() for layer in MODEL.architecture.layers())
    logits = 64 * MODEL.architecture.head.output.out_features * 4   # type: ignore[union-attr]  # litgpt's loop
    # still holds its fp32 logits at the optimizer step (frameworks.py fp32_output, LossMemory.kept)
    assert litgpt - torchtune - logits == pytest.approx(blocks * 2 // 2, rel=0.01)  # bf16 gradients, sharded over 2
