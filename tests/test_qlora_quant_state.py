"""ZeRO-3 / FSDP QLoRA: a 4-bit weight's quant_state (absmax and, with double quantization, the nested
statistics) is a Python attribute of bitsandbytes' Params4bit, outside FSDP's flat parameter and ZeRO-3's
partitions, so every rank keeps all of them whole on the GPU, also under parameter offload (see
memory/training.py _resident_weights_bytes). Hand derivation on a tiny Llama: 8 blocks of 4 x h^2 attention and
3 x h x I MLP weights, all quantized with NF4 + double quantization (blocks of 64, nested blocks of 256)."""

from __future__ import annotations

from by_hand import round512

from vramfit import estimate
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import Settings

H, I, LAYERS = 1024, 2816, 8
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H,
         "intermediate_size": I, "num_hidden_layers": LAYERS, "num_attention_heads": 8, "num_key_value_heads": 8,
         "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False}
MODEL = Model(name="llama-tiny", architecture=read_architecture(LLAMA), source="config", config=LLAMA)
QLORA = Settings().replace(mode="training", batch_size=1, seq_len=512, dtype="bf16", finetune="qlora",
                           quant="bnb-nf4-dq", grad_ckpt="full")


def _quant_state(n: int) -> int:
    """uint8 absmax per 64 weights, fp32 absmax per 256 blocks, the 256-entry fp32 code, the fp32 offset."""
    blocks = n // 64
    return round512(blocks) + round512(4 * -(-blocks // 256)) + round512(4 * 256) + round512(4)


QUANT_STATE = LAYERS * sum(_quant_state(n) for n in (H * H,) * 4 + (H * I,) * 3)
# DeepSpeed ZeRO-3 also keeps a whole copy of every parameter of at most 1e5 elements beside its partition
# (memory/training.py _persistent_bytes): 2 norms per block and the final one (h, bf16), and the adapters on q_proj
# and v_proj (r x h and h x r, r = 8, fp32 with the current PEFT)
PERSISTENT = (2 * LAYERS + 1) * round512(2 * H) + LAYERS * 4 * round512(4 * 8 * H)


def _weights(**changes: object) -> int:
    return estimate(MODEL, QLORA.replace(**changes)).memory.as_dict().get("weights", 0)


def test_quant_state_is_about_an_eighth_byte_per_weight() -> None:
    # the derivation's own check: 8/64 + 32/(64 x 256) = 0.127 bits per weight, plus the per-tensor constants
    weights = LAYERS * (4 * H * H + 3 * H * I)
    assert 0.126 < QUANT_STATE * 8 / weights < 0.135


def test_fsdp_shards_the_packed_data_but_not_the_quant_state() -> None:
    whole, sharded = _weights(), _weights(gpus=2, fsdp="full")
    # (whole - Q) / 2 + Q: the quant_state is counted once per rank, not halved
    assert abs(2 * sharded - whole - QUANT_STATE) <= 2
    assert _weights(gpus=2, zero_stage=3) == sharded + PERSISTENT


def test_parameter_offload_leaves_the_quant_state_on_the_gpu() -> None:
    assert _weights(gpus=2, fsdp="full", offload="params") == QUANT_STATE
    assert _weights(gpus=2, zero_stage=3, offload="params") == QUANT_STATE + PERSISTENT


def test_lora_without_quantization_offloads_everything() -> None:
    assert _weights(gpus=2, fsdp="full", offload="params", finetune="lora", quant=None) == 0


def test_parameter_offload_moves_the_packed_4bit_data_to_the_host() -> None:
    def host(**changes: object) -> int:
        settings = QLORA.replace(gpus=2, fsdp="full", offload="params", **changes)
        return estimate(MODEL, settings).extra["host_memory"]["parameters"]
    # every quantized linear: 2 bytes per element in bf16 -> its packed pairs, round512(n / 2); the rest unchanged
    saved = LAYERS * sum(2 * n - round512(n // 2) for n in (H * H,) * 4 + (H * I,) * 3)
    assert abs((host(finetune="lora", quant=None) - host()) - saved // 2) <= 64 * 512
