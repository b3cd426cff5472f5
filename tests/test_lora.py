"""Which tensors train under each fine-tuning method, against PEFT's own count on the same config."""

from __future__ import annotations

import pytest

from vramfit.errors import InvalidSetting
from vramfit.memory.lora import nf4_storages, parameter_tensors, targeted_linears, trainable_parameters
from vramfit.model.hf_config import read_architecture
from vramfit.settings import LoRA, Training

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
         "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 2048, "max_position_embeddings": 512, "tie_word_embeddings": False}


def _trainable(targets: tuple[str, ...], rank: int = 8, finetune: str = "lora") -> int:
    training = Training(finetune=finetune, lora=LoRA(rank=rank, targets=targets))  # type: ignore[arg-type]
    return trainable_parameters(parameter_tensors(read_architecture(LLAMA), training))


def test_lora_q_v_by_hand() -> None:
    # q: 8 x 256 + 256 x 8; v: 8 x 256 + 128 x 8; four layers
    assert _trainable(("q_proj", "v_proj")) == 4 * (8 * 256 + 256 * 8 + 8 * 256 + 128 * 8)


def test_dora_adds_a_magnitude_vector_per_target() -> None:
    assert _trainable(("q_proj",), finetune="dora") == 4 * (8 * 256 + 256 * 8 + 256)


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("all-linear",), ("gate_proj", "down_proj")])
def test_trainable_count_matches_peft(targets: tuple[str, ...]) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    fields = {k: v for k, v in LLAMA.items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    wanted = "all-linear" if targets == ("all-linear",) else list(targets)
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules=wanted))
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert _trainable(targets, rank=16) == expected


def test_all_linear_leaves_out_the_output_head() -> None:
    names = {linear.name for _, linear in targeted_linears(read_architecture(LLAMA), ("all-linear",))}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(InvalidSetting, match="qkv_proj is not a linear of this model; its linears are"):
        targeted_linears(read_architecture(LLAMA), ("qkv_proj",))


def test_full_finetuning_with_frozen_layers() -> None:
    arch = read_architecture(LLAMA)
    full = trainable_parameters(parameter_tensors(arch, Training()))
    frozen = trainable_parameters(parameter_tensors(arch, Training(frozen_layers=2)))
    assert full == arch.parameter_count().total
    assert full - frozen == 2 * arch.decoder.layers[0].parameters()  # type: ignore[union-attr]


def test_nf4_storage_of_a_4096_square_matrix() -> None:
    # 16,777,216 values: 8 MiB packed, 262,144 blocks of 64 with an fp32 absmax each
    assert nf4_storages(4096 * 4096, double_quant=False) == (8 * 1024 * 1024, 262144 * 4)
    # double quant: uint8 absmax per block, fp32 absmax per 256 blocks, the 256-entry code and the offset
    assert nf4_storages(4096 * 4096, double_quant=True) == (8 * 1024 * 1024, 262144, 1024 * 4, 1024, 4)
