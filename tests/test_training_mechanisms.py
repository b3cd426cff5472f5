"""Training mechanisms checked one at a time on tiny configs (each compared with the traced suite's rows in
data/truth/traced/; these pin the arithmetic of each mechanism, not the models)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vramfit import estimate
from vramfit.memory import activations as act
from vramfit.memory import training
from vramfit.model.hf_config import read_architecture
from vramfit.model.loaded import Model
from vramfit.settings import LoRA, Settings

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
         "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
         "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False}
BERT = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 256, "intermediate_size": 1024,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 30522, "max_position_embeddings": 512,
        "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12}
TRAIN = Settings().replace(mode="training", batch_size=2, seq_len=512, dtype="bf16")


def _model(config: dict[str, object], name: str = "tiny") -> Model:
    return Model(name=name, architecture=read_architecture(config), source="config", config=config)


def test_masked_lm_loss_stays_in_the_model_dtype_without_amp() -> None:
    """BertForMaskedLM: CrossEntropyLoss on the bf16 scores, T x V x 2 saved; a causal LM saves T x V x 4."""
    bert = _model(BERT)
    tokens, vocab = TRAIN.workload.batch_size * TRAIN.workload.seq_len, 30522
    loss = estimate(bert, TRAIN).memory["logits_and_loss"]
    assert loss == 2 * act._t(tokens * vocab, 2)           # nll_loss and log_softmax gradients, bf16
    amp = estimate(bert, TRAIN.replace(dtype="fp32", amp="bf16")).memory["logits_and_loss"]
    assert amp == 2 * act._t(tokens * vocab, 4)            # under autocast the loss runs in fp32


def test_rms_norm_saves_its_fp32_copy_instead_of_the_residual_sum() -> None:
    layer = read_architecture(LLAMA).decoder.layers[0]      # type: ignore[union-attr]
    bf16 = act.layer_saved(layer, act.Shape(batch=1, seq=128, compute_bytes=2)).parts
    fp32 = act.layer_saved(layer, act.Shape(batch=1, seq=128, compute_bytes=4)).parts
    assert bf16["residual"] == 0
    assert fp32["residual"] == 2 * act._t(128 * 1024, 4)


def test_gemma_norm_saves_the_normalised_x_in_fp32() -> None:
    layer = read_architecture(LLAMA).decoder.layers[0]      # type: ignore[union-attr]
    shape = act.Shape(batch=1, seq=128, compute_bytes=2)
    llama = act.layer_saved(layer, shape).parts["norms"]
    gemma_norms = tuple(replace(norm, weight_in_fp32=True) for norm in layer.norms)
    gemma = act.layer_saved(replace(layer, norms=gemma_norms), shape).parts["norms"]
    assert gemma - llama == 2 * (act._t(128 * 1024, 4) - act._t(128 * 1024, 2))


def test_transformers_tensor_parallelism_keeps_the_full_vocabulary_loss() -> None:
    model = _model(LLAMA)
    single = estimate(model, TRAIN).memory["logits_and_loss"]
    tp2 = estimate(model, TRAIN.replace(gpus=2, tensor=2))
    assert tp2.memory["logits_and_loss"] == single
    assert any("tp_plan" in note for note in tp2.notes)


def test_fsdp_keeps_the_root_unit_gathered_at_the_loss() -> None:
    model = _model(LLAMA)
    result = estimate(model, TRAIN.replace(gpus=4, fsdp="full"))
    root = sum(act._t(n, 2) for n in (32000 * 1024, 32000 * 1024, 1024))   # embedding, untied head, final norm
    block = result.memory["gathered_parameters"] - root
    assert result.extra["peak_phase"] == "backward_start"
    assert 0 < block < root                                 # one prefetched block beside the root


def test_frozen_experts_do_not_save_the_gathered_input() -> None:
    moe = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 512,
           "intermediate_size": 1024, "moe_intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "num_experts": 8,
           "num_experts_per_tok": 2, "vocab_size": 1000, "max_position_embeddings": 4096,
           "tie_word_embeddings": False}
    mlp = read_architecture(moe).decoder.layers[0].mlp     # type: ignore[union-attr]
    shape = act.Shape(batch=1, seq=64, compute_bytes=2)
    trained = act.moe_saved(mlp, shape)  # type: ignore[arg-type]
    frozen = act.moe_saved(mlp, replace(shape, trains=False))  # type: ignore[arg-type]
    down_input = act._t(64 * 2 * 256, 2)
    assert trained - frozen == act._t(64 * 2 * 512, 2) + down_input


def test_cached_tensor_terms_give_the_same_estimate_as_fresh_ones() -> None:
    model = _model(LLAMA)
    for changes in ({}, {"finetune": "lora", "lora": LoRA(targets=("all-linear",))}, {"frozen_layers": 3},
                    {"gpus": 8, "zero_stage": 3}):
        settings = TRAIN.replace(**changes)
        cached = estimate(model, settings)
        training._TERMS.clear()
        training._SMALL.clear()
        assert estimate(model, settings) == cached


@pytest.mark.parametrize("framework", ["litgpt", "transformers"])
def test_fsdp_gradient_accumulation_keeps_unsharded_gradients(framework: str) -> None:
    """litgpt accumulates under fabric.no_backward_sync -> FSDP.no_sync(), the HF Trainer under accelerator.no_sync
    (transformers 5.23 trainer.py 1896-1907): the full model gradients, not shards, until the sync step; without
    accumulation each rank keeps at most its shard (1/4 on 4 GPUs)."""
    model = _model(LLAMA)
    accumulating = TRAIN.replace(grad_accum=4, framework=framework)
    whole = estimate(model, accumulating).memory["gradients"]   # one GPU: every gradient
    assert whole > 0
    assert estimate(model, accumulating.replace(gpus=4, fsdp="full")).memory["gradients"] == whole
    assert estimate(model, accumulating.replace(gpus=4, fsdp="full", grad_accum=1)).memory.as_dict().get(
        "gradients", 0) < whole / 3


def test_litgpt_fine_tunes_a_tied_model_with_its_own_head() -> None:
    """litgpt's convert_hf_checkpoint copies the token table into lm_head.weight and the finetune scripts never
    re-tie it: a tied model trains with a second vocabulary x hidden matrix (weights, and its gradient in full FT)."""
    tied = _model({**LLAMA, "tie_word_embeddings": True})
    full = TRAIN.replace(finetune="full")
    hf = estimate(tied, full)
    litgpt = estimate(tied, full.replace(framework="litgpt"))
    assert litgpt.parameters.total == hf.parameters.total + 32000 * 1024
    untied = estimate(_model(LLAMA), full.replace(framework="litgpt"))
    assert litgpt.parameters.total == untied.parameters.total
    assert litgpt.memory["weights"] == untied.memory["weights"]
