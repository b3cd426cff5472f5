"""ZeRO-3 / FSDP QLoRA: the all-gather returns a 4-bit base weight's packed data (bitsandbytes Params4bit in
bnb_4bit_quant_storage), not a compute-dtype copy; absmax stays in quant_state outside the flat parameter.
Hand derivation on a tiny Llama: per block, 4 x h^2 attention + 3 x h x I MLP weights quantized, 2 norms of h.
This model (168M elements) is below DeepSpeed's stage3_max_live_parameters (1e9), so ZeRO-3 keeps every partitioned
tensor gathered (tests/test_deepspeed_gathered.py): the 8 blocks' linears, the embedding and the head; the norms and
the adapters (at most 1e5 elements) are persistent and never gathered."""

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


def _gathered(**changes: object) -> int:
    return estimate(MODEL, BASE.replace(**changes)).memory.as_dict()["gathered_parameters"]


BLOCKS, ROOT = 8, 2 * 32000 * H  # the embedding and the untied head, never quantized


def test_zero3_lora_gathers_every_partitioned_tensor_in_bf16() -> None:
    # the LoRA baseline the QLoRA figure is compared with: every linear, the embedding and the head in bf16
    assert _gathered() == 2 * (BLOCKS * LINEARS + ROOT)


def test_zero3_qlora_gathers_the_packed_4bit_data() -> None:
    lora, qlora = _gathered(), _gathered(finetune="qlora", quant="bnb-nf4-dq")
    # each quantized linear shrinks from 2 bytes to 1/2 byte per element (packed pairs); the root stays in bf16
    saved = BLOCKS * sum(2 * n - round512(n // 2) for n in (H * H,) * 4 + (H * I,) * 3)
    assert lora - qlora == saved
    assert qlora - 2 * ROOT < (lora - 2 * ROOT) / 3  # would be ~lora (bf16 copies of every weight) before the fix
