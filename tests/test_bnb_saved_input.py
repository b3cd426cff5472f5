"""bitsandbytes < 0.43.2: each 4-bit linear kept its input (MatMul4Bit `ctx.tensors = (A, B)`), and the setting
that says which release a QLoRA run used (`--bitsandbytes`, Training.bitsandbytes).

Source: bitsandbytes/autograd/_functions.py MatMul4Bit.forward at 0.41.0, 0.42.0, 0.43.1 keeps `(A, B)`; commit
9e753741 (#1270, 2024-07-16) keeps `(None, B)`, first released in 0.43.2. A is held on ctx, not by
save_for_backward, so backward does not free it: it lives as long as the graph (memory/lora.py).
The hand derivations below count each distinct tensor once and round each to 512 bytes (all these are multiples).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramfit import estimate
from vramfit.cli import main
from vramfit.errors import InvalidSetting
from vramfit.model.sources import load_model
from vramfit.settings import (
    LoRA,
    Precision,
    Settings,
    Training,
    Workload,
    bitsandbytes_version,
    settings_from_dict,
)
from vramfit.truth.published import bitsandbytes_of, convert_row
from vramfit.units import GiB

T = 1304          # lit-gpt's longest Alpaca sample for Llama 2 (tutorials/resource-tables.md at 0cc02afa)
H, I, LAYERS = 4096, 11008, 32   # Llama-2-7B (config.json)
E = 2             # bf16


def _qlora(framework: str, version: str, *, dropout: float = 0.05, ckpt: str = "none",
           quant: str | None = None) -> Settings:
    return Settings(workload=Workload(mode="training", batch_size=1, seq_len=T),
                    precision=Precision(dtype="bf16", quant=quant),
                    training=Training(finetune="qlora", framework=framework, bitsandbytes=version,
                                      optimizer="paged-adamw", grad_ckpt=ckpt,
                                      lora=LoRA(rank=8, targets=("q_proj", "v_proj"), dropout=dropout)))


@pytest.fixture(scope="module")
def llama() -> object:
    return load_model("meta-llama/Llama-2-7b-hf")


def _phases(model: object, settings: Settings) -> dict[str, int]:
    phases: dict[str, int] = estimate(model, settings).extra["phases"]  # type: ignore[arg-type]
    return phases


def _added(model: object, framework: str, **kw: object) -> dict[str, int]:
    """Per phase, what bitsandbytes 0.41.1 adds over the current release."""
    old, new = _phases(model, _qlora(framework, "0.41.1", **kw)), _phases(model, _qlora(framework, "latest", **kw))
    return {name: old[name] - new[name] for name in new}


def test_litgpt_llama_2_7b_by_hand(llama: object) -> None:
    """litgpt (lit-gpt 8641822 finetune/lora.py: lora_dropout 0.05, so lora_A saves the dropout output, not x;
    the fused qkv, proj, fc_1/fc_2 and mlp.proj are 4-bit, and lm_head too: BitsandbytesPrecision converts every
    nn.Linear). Per block: qkv input T x h + MLP input T x h + mlp.proj input T x I; proj reads the attention
    kernel's saved output (a view), so it adds nothing; plus lm_head's input T x h.
    (2 x 4096 + 11008) x 1304 x 2 B x 32 + 4096 x 1304 x 2 B = 1.50 GiB. docs/PUBLISHED-TRAINING-ROWS.md D
    counted proj's input too, (3 x 4096 + 11008) ... = 1.82 GiB; that tensor is already the kernel's output.
    litgpt keeps `logits` and `loss` as loop variables, so the previous step's kept inputs are still alive at
    the forward (twice), once from the start of backward through the optimizer step."""
    once = LAYERS * (2 * H + I) * T * E + H * T * E
    assert round(once / GiB, 2) == 1.50
    added = _added(llama, "litgpt")
    assert added["forward"] == 2 * once
    assert added["backward_start"] == once
    assert added["optimizer_step"] == once
    assert all(added[name] == once for name in added if name.startswith("backward_block_"))


def test_transformers_peft_llama_2_7b_by_hand(llama: object) -> None:
    """transformers + PEFT: lm_head stays bf16 (the bitsandbytes integration skips it), so only the blocks:
    q/k/v input + gate/up input + down_proj input; the fp32 adapters (autocast_adapter_dtype) cast x into
    their own copy, so the bf16 x is the 4-bit linears' alone. Trainer.training_step returns loss.detach(), so
    the graph (and the kept inputs) is gone before the optimizer step."""
    once = LAYERS * (2 * H + I) * T * E
    added = _added(llama, "transformers", dropout=0.0)
    assert added["forward"] == once
    assert added["backward_start"] == once
    assert added["optimizer_step"] == 0


def test_a_lora_adapter_reading_the_same_tensor_is_not_counted_twice(llama: object) -> None:
    """litgpt without LoRA dropout: lora_A (bf16, the model dtype) saves the very qkv input the 4-bit qkv keeps;
    that tensor is already in the activations, so only the MLP input, the mlp.proj input and lm_head's remain."""
    once = LAYERS * (H + I) * T * E + H * T * E
    assert _added(llama, "litgpt", dropout=0.0)["backward_start"] == once


def test_phi_shared_norm_output_is_one_tensor() -> None:
    """phi-1.5: one norm feeds attention and MLP (parallel block), so qkv and fc read one tensor: per block
    T x h + fc2's input T x I (gelu's output), plus lm_head's input."""
    phi = load_model("microsoft/phi-1_5")
    h, inter, layers, tokens = 2048, 8192, 24, 1044
    once = layers * (h + inter) * tokens * E + h * tokens * E
    settings = _qlora("litgpt", "0.41.1").replace(seq_len=tokens)
    latest = settings.replace(bitsandbytes="latest")
    assert _phases(phi, settings)["backward_start"] - _phases(phi, latest)["backward_start"] == once


def test_full_checkpointing_keeps_none_in_the_forward(llama: object) -> None:
    """Reentrant checkpointing runs the blocks' forward without grad: nothing kept until a block is recomputed,
    and then that block's inputs only, until its backward is done."""
    added = _added(llama, "transformers", ckpt="full")
    per_block = (2 * H + I) * T * E
    assert added["forward"] == 0
    assert max(added.values()) == per_block


def test_explain_shows_the_term_formula_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", "meta-llama/Llama-2-7b-hf", "--mode", "training", "--finetune", "qlora", "--dtype", "bf16",
            "--seq-len", "1304", "--framework", "litgpt", "--bitsandbytes", "0.42.0", "--json", "--explain"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    term = next(c for c in out["components"] if c["name"] == "bitsandbytes_saved_inputs")
    assert "MatMul4Bit" in term["source"]
    assert "T x I" in term["formula"]
    assert term["inputs"]["bitsandbytes"] == "0.42.0"


def test_current_bitsandbytes_keeps_nothing(llama: object) -> None:
    names = estimate(llama, _qlora("transformers", "latest")).memory.as_dict()
    assert "bitsandbytes_saved_inputs" not in names
    assert "bitsandbytes_saved_inputs" not in estimate(llama, _qlora("litgpt", "0.43.2")).memory.as_dict()


def test_double_quantization_saves_what_the_published_rows_show(llama: object) -> None:
    """--quant bnb-nf4-dq with --finetune qlora: absmax as 8-bit with nested fp32 constants. The lit-gpt resource
    tables measured 13.17 - 12.89 = 0.28 GiB less for NF4-DQ than NF4 on Llama-2-7B (and the inference rows
    4.26 - 3.97 = 0.29 GiB): 4-bit block linears 6,476,005,376 elements x (4 - 1 - 4/256) / 64 bytes plus
    lm_head's 131,072,000 under litgpt = 0.29 GiB."""
    plain = estimate(llama, _qlora("litgpt", "latest")).memory["weights"]
    dq = estimate(llama, _qlora("litgpt", "latest", quant="bnb-nf4-dq")).memory["weights"]
    assert 0.28 * GiB < plain - dq < 0.30 * GiB


@pytest.mark.parametrize(("text", "version"), [("0.42.0", (0, 42, 0)), ("0.41", (0, 41, 0)),
                                               ("0.43.2rc1", (0, 43, 2)), ("latest", None)])
def test_versions_parse(text: str, version: tuple[int, int, int] | None) -> None:
    assert bitsandbytes_version(text) == version


@pytest.mark.parametrize(("text", "keeps"), [("0.41.1", True), ("0.42.0", True), ("0.43.1", True),
                                             ("0.43.2", False), ("0.45.5", False), ("1.0", False),
                                             ("latest", False)])
def test_the_fix_is_0_43_2(text: str, keeps: bool) -> None:
    assert Training(bitsandbytes=text).bnb_saves_4bit_input is keeps


@pytest.mark.parametrize("bad", ["new", "", "0.x", "v", "0.42.0.1.2"])
def test_a_bad_version_names_the_field_and_the_fix(bad: str) -> None:
    with pytest.raises(InvalidSetting, match=r"^bitsandbytes: .*--bitsandbytes"):
        _qlora("transformers", bad).validate()


def test_cli_reports_a_bad_version_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--params", "1B", "--mode", "training", "--finetune", "qlora",
                 "--bitsandbytes", "newest"]) == 2
    err = capsys.readouterr().err
    assert "bitsandbytes: 'newest' is not a bitsandbytes version" in err
    assert "Traceback" not in err


def test_torchtune_quantizes_with_torchao_so_an_old_bitsandbytes_is_refused() -> None:
    with pytest.raises(InvalidSetting, match="torchao"):
        _qlora("torchtune", "0.42.0").validate()
    _qlora("torchtune", "latest").validate()


def test_the_setting_round_trips_through_json_settings() -> None:
    settings = _qlora("litgpt", "0.42.0", quant="bnb-nf4-dq")
    again = settings_from_dict(json.loads(json.dumps(settings.to_dict())))
    assert again == settings
    assert again.validate().training.bitsandbytes == "0.42.0"


def test_qlora_takes_nf4_with_double_quant_but_not_other_formats() -> None:
    _qlora("transformers", "latest", quant="bnb-nf4-dq").validate()
    with pytest.raises(InvalidSetting, match="bnb-nf4-dq"):
        _qlora("transformers", "latest", quant="gptq-4bit").validate()


def _src(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": "x", "source": {"repo": "Lightning-AI/litgpt", "path": "tutorials/resource-tables.md"},
        "model": "meta-llama/Llama-2-7b-hf", "method": "qlora", "dtype_quant": "bf16-true + NF4",
        "optimizer": "bnb PagedAdamW", "batch_per_device": 1, "grad_accum": None, "seq_len": 1304,
        "grad_ckpt": False, "flash_attn": "PyTorch SDPA", "lora_rank": 8, "lora_targets": "query,value",
        "gpus": {"count": 1, "type": "A100-SXM4 40GB"}, "parallelism": "single GPU", "framework": "lit-gpt",
        "trust": "high: stated software (A100-SXM4-40GB, PyTorch 2.1.0+cu121, bitsandbytes 0.41.1)",
        "what_measured": "torch.cuda.max_memory_allocated()/1e9 (decimal GB)", "measured_gb": 13.17}
    row.update(changes)
    return row


def test_converter_reads_the_stated_bitsandbytes_release() -> None:
    settings = settings_from_dict(convert_row(_src()).settings)
    assert settings.training.bitsandbytes == "0.41.1"
    assert settings.precision.quant is None          # plain NF4 is what --finetune qlora means


def test_converter_takes_litgpt_hub_tables_pin_and_nothing_for_unknown_sources() -> None:
    hub = _src(trust="medium", source={"repo": "Lightning-AI/litgpt", "path": "config_hub/finetune/README.md"})
    assert bitsandbytes_of(hub) == "0.42.0"
    assert bitsandbytes_of(_src(trust="medium", source={"repo": "huggingface/peft", "path": "docs/x.md"})) == "latest"


def test_converter_dates_an_issue_before_the_fix_and_keeps_glm4_non_reentrant() -> None:
    """LLaMA-Factory #4772 (2024-07-11) predates 0.43.2; GLM-4's remote code checkpoints with use_reentrant=False."""
    glm = _src(trust="low-medium", notes="", model="THUDM/glm-4-9b-chat", grad_ckpt=True,
               source={"repo": "hiyouga/LlamaFactory", "issue_or_pr": "issue #4772"})
    training = settings_from_dict(convert_row(glm).settings).training
    assert (training.bitsandbytes, training.use_reentrant) == ("0.43.1", False)
    other = settings_from_dict(convert_row(_src(grad_ckpt=True)).settings).training
    assert other.use_reentrant                      # reentrant is the trainers' default
    no_ckpt = settings_from_dict(convert_row({**glm, "grad_ckpt": False}).settings).training
    assert no_ckpt.use_reentrant                    # the setting applies to full checkpointing only


def test_converter_keeps_double_quantization_for_qlora_rows() -> None:
    row = convert_row(_src(dtype_quant="bf16-true + NF4 double-quant"))
    assert settings_from_dict(row.settings).precision.quant == "bnb-nf4-dq"


def test_http_api_carries_the_setting_and_its_error() -> None:
    pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'vramfit[web]'")
    from fastapi.testclient import TestClient

    from vramfit.web.app import create_app

    client = TestClient(create_app(max_body_bytes=64 * 1024))
    settings = {"workload": {"mode": "training", "seq_len": 1304}, "precision": {"dtype": "bf16"},
                "training": {"finetune": "qlora", "framework": "litgpt", "bitsandbytes": "0.42.0"}}
    body = client.post("/api/estimate", json={"model": "meta-llama/Llama-2-7b-hf", "settings": settings}).json()
    assert body["settings"]["training"]["bitsandbytes"] == "0.42.0"
    kept = [c for c in body["memory"]["components"] if c["name"] == "bitsandbytes_saved_inputs"]
    assert kept and kept[0]["bytes"] > 0
    settings["training"]["bitsandbytes"] = "soon"
    bad = client.post("/api/estimate", json={"model": "meta-llama/Llama-2-7b-hf", "settings": settings})
    assert bad.status_code == 422
    assert "bitsandbytes" in bad.text


@settings(max_examples=25, deadline=None)
@given(framework=st.sampled_from(["transformers", "litgpt"]), batch=st.integers(1, 8), seq=st.integers(16, 4096),
       ckpt=st.sampled_from(["none", "full", "selective"]))
def test_an_old_release_never_needs_less_and_grows_with_the_tokens(framework: str, batch: int, seq: int,
                                                                    ckpt: str) -> None:
    model = load_model("meta-llama/Llama-2-7b-hf")
    old = _qlora(framework, "0.42.0", ckpt=ckpt).replace(batch_size=batch, seq_len=seq)
    assert estimate(model, old).peak.allocated >= estimate(model, old.replace(bitsandbytes="latest")).peak.allocated
    longer = estimate(model, old.replace(seq_len=seq + 64)).peak.allocated
    assert longer >= estimate(model, old).peak.allocated
