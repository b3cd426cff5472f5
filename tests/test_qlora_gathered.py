"""ZeRO-3 / FSDP QLoRA: the all-gather returns a 4-bit base weight's packed data (bitsandbytes Params4bit in
bnb_4bit_quant_storage), not a compute-dtype copy; absmax stays in quant_state outside the flat parameter.
Hand derivation on a tiny Llama: per block, 4 x h^2 attention + 3 x h x I MLP weights quantized, 2 norms of h."""

from __future__ import annotations

from by_hand import round512

from vramfit import estimate
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import Settings

H, I = 1024, 2816
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H,
         "intermediate_size": I, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8,
         "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False}
MODEL = Model(name="llama-tiny", architecture=read_architecture(LLAMA), source="config", config=LLAMA)
BASE = Settings().replace(mode="training", batch_size=1, seq_len=512, dtype="bf16", finetune="lora",
                          grad_ckpt="full", gpus=2, zero_stage=3)
LINEARS = 4 * H * H + 3 * H * I  # q, k, v, o (8 kv heads = 8 heads) and gate, up, down
NORMS = 2 * H
RANK = BASE.training.lora.rank  # 8, on the default targets q_proj and v_proj (h -> h each)
ADAPTERS = 2 * (RANK * H + H * RANK)  # lora_A (r x in) + lora_B (out x r) on q_proj and v_proj


def _gathered(**changes: object) -> int:
    return estimate(MODEL, BASE.replace(**changes)).memory.as_dict()["gathered_parameters"]


def test_zero3_lora_gathers_two_blocks_in_bf16() -> None:
    # the LoRA baseline the QLoRA figure is compared with: every tensor of the block in bf16
    assert abs(_gathered() - 2 * 2 * (LINEARS + NORMS + ADAPTERS)) < 2 * 64 * 512


def test_zero3_qlora_gathers_the_packed_4bit_data() -> None:
    lora, qlora = _gathered(), _gathered(finetune="qlora", quant="bnb-nf4-dq")
    # each quantized linear shrinks from 2 bytes to 1/2 byte per element (packed pairs); norms and adapters stay
    saved = 2 * sum(2 * n - round512(n // 2) for n in (H * H,) * 4 + (H * I,) * 3)
    assert abs((lora - qlora) - saved) < 2 * 64 * 512
    assert qlora < lora / 3  # would be ~lora (bf16 copies of every weight) before the fix
