"""Published measurements (/work/shared/truth/published-measurements.jsonl) -> truth rows.

Regenerate the committed file with
    python -m vramfit.truth.published /work/shared/truth/published-measurements.jsonl data/truth/published.jsonl
(or `vramfit validate --convert-published SRC [--output DEST]`).

Each source row names what it measured (`what_measured`) and in which unit (`measured_gb` = 10^9 bytes,
`measured_gib` = 2^30, `measured_mib` = 2^20). The mapping, field by field:
- model: the hub id with any "(...)" remark removed; a name that is not an owner/name id is unmapped.
- method: inference | full_ft | lora | qlora -> Workload.mode and Training.finetune.
- dtype_quant: the weight dtype, AMP ("mixed": fp32 weights + autocast) and quantization format (NF4 with
  double quantization -> bnb-nf4-dq, for QLoRA rows too; AutoAWQ GEMM group 128 -> awq-4bit-g128).
- bitsandbytes release (training rows; it decides whether 4-bit linears kept their inputs, see
  settings.BNB_4BIT_INPUT_FREED): the version the row's own text states ("bitsandbytes 0.41.1" in the lit-gpt
  resource tables' trust note), else the version its source pinned (_PINNED_BITSANDBYTES), else "latest".
- framework: lit-gpt / litgpt rows run as the litgpt runtime and framework, the rest as transformers.
- PEFT release (Training.peft: before 0.12.0 adapters take the base weight's dtype): its source's pin (_PINNED_PEFT:
  the PEFT docs' FSDP / DeepSpeed pages), else "latest".
- torch release (Runtime.torch: the CUDA context's module loading, softmax's saved input, zero_grad's in-place
  gradients): the version the row's text states ("torch 2.1.0"), else its source's pin (_PINNED_TORCH: the
  transformers docs' 2022 BERT-large page), else "latest".
- grad_accum (micro-steps per optimizer step; with FSDP, litgpt's `no_sync` keeps unsharded gradients while
  accumulating): the row's own value, else what its text states (lit-gpt 8641822's "minibatch 128 via grad
  accumulation": 128 // micro-batch), else its source's config at the table's commit (_LITGPT_HUB_CONFIGS:
  global_batch_size // devices // micro_batch_size), else 1. The same config's `devices` is the GPU count of
  a litgpt hub row: its table's "Machine" column names the machine, not the devices the run used.
- optimizer, batch_per_device, grad_accum, seq_len (+ new tokens parsed from seq_len_note for inference),
  grad_ckpt, flash_attn, lora_rank / lora_targets, gpus / parallelism -> the matching Settings fields.
- what_measured -> "measure": max_memory_allocated -> allocated; torchtitan's "Peak Memory" -> reserved
  (torchtitan logs torch.cuda max_reserved, torchtitan/tools/utils.py GPUMemoryMonitor); AutoAWQ's
  "Memory (VRAM)" -> allocated (casper-hansen/AutoAWQ examples/benchmark.py: max_memory_allocated/1024**3);
  pynvml / nvidia-smi / per-GPU figures -> device.
- GPUs: settings.gpu = the vramfit catalog id where the name identifies one (vramfit.gpus.lookup), so
  the estimate knows the card; otherwise settings.gpu_memory = the nominal size in the name, read as GiB
  (a "40GB" card has 40 GiB). OOM rows (measure "device") are caught when the estimate exceeds that
  capacity: the catalog's driver-reported usable bytes, else the nominal size (conservative: an estimate
  between usable and nominal counts as a miss).
Rows that cannot be mapped keep their place with "unmapped": the reason.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from vramfit.errors import InvalidConfig
from vramfit.settings import LoRA, Parallelism, Precision, Runtime, Settings, Training, Workload
from vramfit.truth.rows import Quantity, TruthRow, write_rows
from vramfit.units import GiB, MiB


class Unmappable(Exception):
    """A source row that cannot become Settings; the message is the reason listed."""


def convert_file(source: str | Path) -> list[TruthRow]:
    path = Path(source)
    if not path.is_file():
        raise InvalidConfig(f"{path}: no such file; pass the published-measurements .jsonl")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(convert_row(json.loads(line)))
            except json.JSONDecodeError as error:
                raise InvalidConfig(f"{path}:{number}: not JSON ({error.msg})") from None
    return rows


def convert_row(src: dict[str, Any]) -> TruthRow:
    """One published measurement as a truth row, or as an unmapped row with the reason."""
    base: dict[str, Any] = {"id": str(src["id"]), "kind": "published", "source": _source(src)}
    try:
        settings, group = settings_of(src)
        measure, truth, oom = measured(src)
        if oom and settings.gpu is None and settings.gpu_memory is None:
            raise Unmappable(f"OOM on an unknown GPU ({src.get('gpus')}): no capacity to compare against")
    except Unmappable as reason:
        return TruthRow(**base, model=str(src.get("model")), settings={}, unmapped=str(reason))
    return TruthRow(**base, model=model_id(src["model"]), settings=settings.to_dict(), truth=truth,
                    measure=cast(Quantity, measure), oom=oom, group=group,
                    env={"gpu": src["gpus"].get("type"), "framework": src.get("framework")})


def _source(src: dict[str, Any]) -> dict[str, Any]:
    keep = ("source", "trust", "notes", "what_measured", "dtype_quant", "optimizer", "parallelism",
            "framework", "seq_len_note", "unit_in_source")
    kept = {key: src[key] for key in keep if src.get(key) is not None}
    config = litgpt_hub_config(src)
    if config is not None:
        kept["config"] = (f"config_hub/finetune/{config.path} at {config.commit}: devices {config.devices}, "
                          f"global_batch_size {config.global_batch_size}, micro_batch_size {config.micro_batch_size}")
    return kept


def model_id(name: Any) -> str:
    """'meta-llama/Meta-Llama-3-8B (torchtitan)' -> 'meta-llama/Meta-Llama-3-8B'."""
    text = re.sub(r"\s*\(.*\)\s*$", "", str(name)).strip()
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise Unmappable(f"model {name!r} is not a hub id (owner/name)")
    return text


def settings_of(src: dict[str, Any]) -> tuple[Settings, str]:
    model_id(src.get("model"))
    workload, group = _workload(src)
    precision = _precision(src["dtype_quant"])
    if str(src["method"]) == "qlora" and precision.quant != "bnb-nf4-dq":   # finetune qlora is the NF4 base
        precision = Precision(dtype=precision.dtype, amp=precision.amp)
    if _torchtitan_default_precision(src, precision) or _loads_fp32_under_bf16_fsdp(src):
        precision = Precision(dtype="fp32", amp="bf16")
    gpu = catalog_gpu(src["gpus"].get("type"))
    settings = Settings(workload=workload, precision=precision,
                        training=_training(src), parallelism=_parallelism(src), runtime=_runtime(src),
                        gpu=gpu, gpu_memory=None if gpu else gpu_capacity_bytes(src["gpus"].get("type")))
    return settings, group


def _workload(src: dict[str, Any]) -> tuple[Workload, str]:
    method, seq_len = str(src["method"]), src.get("seq_len")
    if method.startswith("inference ("):
        raise Unmappable(f"method {method!r}: no step was run, vramfit estimates a step")
    if seq_len is None:
        raise Unmappable(f"seq_len not stated ({src.get('seq_len_note')!r}); the token count sets the peak")
    if method == "inference":
        new = _new_tokens(src.get("seq_len_note"))
        return Workload(mode="inference", batch_size=src.get("batch_per_device") or 1, seq_len=seq_len,
                        new_tokens=new), "published/inference"
    if src.get("batch_per_device") is None:
        raise Unmappable("batch_per_device not stated for a training run")
    finetune = {"full_ft": "full", "lora": "lora", "qlora": "qlora"}.get(method.split(" ")[0])
    if finetune is None:
        raise Unmappable(f"method {method!r} is not inference, full_ft, lora or qlora")
    workload = Workload(mode="training", batch_size=src["batch_per_device"], seq_len=seq_len,
                        grad_accum=grad_accum_of(src))
    return workload, f"published/training-{finetune}"


def grad_accum_of(src: dict[str, Any]) -> int:
    """Micro-steps per optimizer step: the row's value, else its text's, else its source's config, else 1."""
    if src.get("grad_accum"):
        return int(src["grad_accum"])
    stated = re.search(r"minibatch (\d+) via grad(?:ient)? accumulation", str(src.get("notes") or ""))
    if stated and src.get("batch_per_device"):
        # lit-gpt 8641822 finetune/lora.py: `gradient_accumulation_iters = batch_size // micro_batch_size`
        # with `batch_size = 128` per process (not divided by `devices`, a module constant the multi-GPU
        # runs set): every rank runs 128 // micro_batch_size micro-steps per optimizer step.
        return max(1, int(stated.group(1)) // int(src["batch_per_device"]))
    config = litgpt_hub_config(src)
    if config is None:
        return 1
    # litgpt/args.py at the tables' commits: gradient_accumulation_iters(devices) =
    # (global_batch_size // devices) // micro_batch_size, asserted > 0.
    return max(1, config.global_batch_size // config.devices // config.micro_batch_size)


@dataclass(frozen=True, slots=True)
class HubConfig:
    """One litgpt `config_hub/finetune/<dir>/<method>.yaml` at the commit that added its README table row."""
    path: str
    commit: str
    devices: int
    global_batch_size: int
    micro_batch_size: int


_HUB_README = ("Lightning-AI/litgpt", "config_hub/finetune/README.md")
# (model, method) -> config. Commit: the one `git blame config_hub/finetune/README.md` at 00af8b0d names for
# the row (5895df10 = #1361 2024-04-26, e5493986 = #1611, f247be87 = #1553 Phi-3, 2b195c7f = #1651 Gemma 2,
# fd71063c = #1619 Llama 3.1); values are the yaml's `devices` and `train:` batch sizes at that commit.
_LITGPT_HUB_CONFIGS = {
    ("google/gemma-2b", "full_ft"): HubConfig("gemma-2b/full.yaml", "5895df10", 4, 16, 1),
    ("google/gemma-2b", "lora"): HubConfig("gemma-2b/lora.yaml", "5895df10", 1, 6, 2),
    ("google/gemma-2b", "qlora"): HubConfig("gemma-2b/qlora.yaml", "5895df10", 1, 6, 2),
    ("google/gemma-7b", "lora"): HubConfig("gemma-7b/lora.yaml", "5895df10", 1, 6, 1),
    ("google/gemma-7b", "qlora"): HubConfig("gemma-7b/qlora.yaml", "e5493986", 1, 6, 1),
    ("google/gemma-2-9b", "lora"): HubConfig("gemma2-9b/lora.yaml", "2b195c7f", 1, 6, 1),
    ("google/gemma-2-9b", "qlora"): HubConfig("gemma2-9b/qlora.yaml", "2b195c7f", 1, 6, 1),
    ("meta-llama/Llama-2-7b-hf", "full_ft"): HubConfig("llama-2-7b/full.yaml", "5895df10", 4, 64, 4),
    ("meta-llama/Llama-2-7b-hf", "lora"): HubConfig("llama-2-7b/lora.yaml", "5895df10", 1, 8, 2),
    ("meta-llama/Llama-2-7b-hf", "qlora"): HubConfig("llama-2-7b/qlora.yaml", "5895df10", 1, 8, 2),
    ("meta-llama/Meta-Llama-3-8B", "full_ft"): HubConfig("llama-3-8b/full.yaml", "5895df10", 4, 64, 4),
    ("meta-llama/Meta-Llama-3-8B", "lora"): HubConfig("llama-3-8b/lora.yaml", "5895df10", 1, 8, 1),
    ("meta-llama/Meta-Llama-3-8B", "qlora"): HubConfig("llama-3-8b/qlora.yaml", "5895df10", 1, 8, 2),
    ("meta-llama/Llama-3.1-8B", "lora"): HubConfig("llama-3.1-8b/lora.yaml", "fd71063c", 1, 8, 1),
    ("meta-llama/Llama-3.1-8B", "qlora"): HubConfig("llama-3.1-8b/qlora.yaml", "fd71063c", 1, 8, 2),
    ("mistralai/Mistral-7B-v0.1", "lora"): HubConfig("mistral-7b/lora.yaml", "5895df10", 1, 8, 2),
    ("mistralai/Mistral-7B-v0.1", "qlora"): HubConfig("mistral-7b/qlora.yaml", "5895df10", 1, 8, 2),
    ("microsoft/phi-2", "full_ft"): HubConfig("phi-2/full.yaml", "5895df10", 2, 8, 4),
    ("microsoft/phi-2", "lora"): HubConfig("phi-2/lora.yaml", "5895df10", 1, 8, 4),
    ("microsoft/phi-2", "qlora"): HubConfig("phi-2/qlora.yaml", "5895df10", 1, 8, 4),
    ("microsoft/Phi-3-mini-4k-instruct", "full_ft"): HubConfig("phi-3/full.yaml", "f247be87", 1, 8, 4),
    ("microsoft/Phi-3-mini-4k-instruct", "lora"): HubConfig("phi-3/lora.yaml", "f247be87", 1, 8, 4),
    ("microsoft/Phi-3-mini-4k-instruct", "qlora"): HubConfig("phi-3/qlora.yaml", "f247be87", 1, 8, 4),
    ("stabilityai/stablelm-base-alpha-3b", "full_ft"): HubConfig("stablelm-base-alpha-3b/full.yaml", "5895df10",
                                                                 2, 8, 1),
    ("stabilityai/stablelm-base-alpha-3b", "lora"): HubConfig("stablelm-base-alpha-3b/lora.yaml", "5895df10",
                                                              1, 8, 1),
    ("stabilityai/stablelm-base-alpha-3b", "qlora"): HubConfig("stablelm-base-alpha-3b/qlora.yaml", "5895df10",
                                                               1, 8, 1),
    ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "full_ft"): HubConfig(
        "tiny-llama/full.yaml", "5895df10", 1, 32, 4),
    ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "lora"): HubConfig(
        "tiny-llama/lora.yaml", "5895df10", 1, 8, 8),
    ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "qlora"): HubConfig(
        "tiny-llama/qlora.yaml", "5895df10", 1, 8, 8),
    ("tiiuae/falcon-7b", "lora"): HubConfig("falcon-7b/lora.yaml", "5895df10", 1, 8, 1),
    ("tiiuae/falcon-7b", "qlora"): HubConfig("falcon-7b/qlora.yaml", "5895df10", 1, 8, 1),
}


def litgpt_hub_config(src: dict[str, Any]) -> HubConfig | None:
    """The config a litgpt hub table row ran with, or None for a row from any other source."""
    if _source_at(src, "path") != _HUB_README:
        return None
    return _LITGPT_HUB_CONFIGS.get((str(src.get("model")), str(src.get("method"))))


def _source_at(src: dict[str, Any], key: str) -> tuple[Any, Any] | None:
    """(repo, the source's `key`: path or issue_or_pr) of a row's source, or None when it names none."""
    where = src.get("source")
    return (where.get("repo"), where.get(key)) if isinstance(where, dict) else None


def _new_tokens(note: Any) -> int:
    match = re.search(r"(?:decode|\+)\s*~?(\d+)(?:\s*new)?", str(note or ""))
    if match is None:
        raise Unmappable(f"inference row whose generated-token count is not stated (seq_len_note {note!r})")
    return int(match.group(1))


_QUANT_PATTERNS = (  # (regex on dtype_quant, vramfit quant format); first match wins
    (r"awq 4-bit.*group 128", "awq-4bit-g128"),
    (r"nf4.*double|double.*nf4|nf4-dq", "bnb-nf4-dq"), (r"nf4|4-bit \(bnb|bnb 4-bit", "bnb-nf4"),
    (r"fp4 quant type", "bnb-fp4"), (r"int8|8-bit", "bnb-int8"))


def _torchtitan_default_precision(src: dict[str, Any], precision: Precision) -> bool:
    """A torchtitan row whose source assumes torchtitan's defaults: the model is built in fp32 and FSDP2's
    MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32) (torchtitan config
    `mixed_precision_param = "bfloat16"`) keeps fp32 sharded parameters and computes in bf16."""
    return ("torchtitan" in str(src.get("framework")).lower() and "defaults assumed" in str(src.get("trust"))
            and precision.dtype == "bf16" and precision.amp is None and precision.quant is None)


def _loads_fp32_under_bf16_fsdp(src: dict[str, Any]) -> bool:
    """The PEFT docs' FSDP LoRA run (peft aa2ca83ca, 2024-02-26): examples/sft/utils.py `create_and_prepare_model`
    calls `from_pretrained` without `torch_dtype`, so transformers of that date loaded fp32 weights, and accelerate
    0.27.2 `FullyShardedDataParallelPlugin.set_mixed_precision` gives FSDP `MixedPrecision(param_dtype=bf16)`: fp32
    sharded parameters, bf16 gathered copies and compute (the row's "bf16 weights" is the mixed-precision setting)."""
    return (_source_at(src, "path") == ("huggingface/peft", "docs/source/accelerate/fsdp.md")
            and str(src.get("method")) == "lora")


def _precision(text: str) -> Precision:
    lowered = text.lower()
    quant = next((fmt for pattern, fmt in _QUANT_PATTERNS if re.search(pattern, lowered)), None)
    if "mixed" in lowered and "bf16 weights" not in lowered:
        amp: Any = "fp16" if "fp16" in lowered else "bf16"
        return Precision(dtype="fp32", amp=amp, quant=quant)   # mixed precision keeps fp32 weights
    dtype: Any = "fp32" if lowered.startswith("fp32") or "fp32 compute" in lowered else (
        "fp16" if lowered.startswith("fp16") or "fp16 activations" in lowered or "int8" in lowered else "bf16")
    return Precision(dtype=dtype, quant=quant)


_OPTIMIZERS = (  # (regex on the source's optimizer text, vramfit optimizer)
    (r"pagedadamw$|paged_adamw_32bit", "paged-adamw"), (r"adam8bit|adamw8bit", "adamw-8bit"),
    (r"adafactor", "adafactor"), (r"adamw?\b", "adamw"))


def _stated_lora_dropout(src: dict[str, Any]) -> float:
    """LoRA dropout as the row's notes state it (the PEFT docs' rows: "lora_alpha 16, dropout 0.1", from
    examples/sft/run_peft_*.sh `--lora_dropout 0.1`), else 0."""
    stated = re.search(r"(?:lora_)?dropout\s*=?\s*(0?\.\d+)", str(src.get("notes") or ""))
    return float(stated.group(1)) if stated and src.get("method") in ("lora", "qlora") else 0.0


def _training(src: dict[str, Any]) -> Training:
    text = str(src.get("optimizer") or "adamw")
    matched = [(pattern, name) for pattern, name in _OPTIMIZERS if re.search(pattern, text.lower())]
    if not matched:
        raise Unmappable(f"optimizer {text!r} has no vramfit equivalent")
    if matched[0][1] is None:
        raise Unmappable(f"optimizer {text!r}: bitsandbytes paged 32-bit AdamW keeps its states in CUDA "
                         "unified memory outside PyTorch's allocator; vramfit has no such optimizer setting")
    method = str(src["method"])
    finetune: Any = "qlora" if method == "qlora" else "lora" if method == "lora" else "full"
    ckpt = src.get("grad_ckpt")
    grad_ckpt: Any = "selective" if isinstance(ckpt, str) and "selective" in ckpt else "full" if ckpt else "none"
    # lit-gpt's finetune/lora.py (and finetune/adapter-era scripts) set lora_dropout = 0.05 as a module
    # default; the rows state r and alpha from the same defaults and no other dropout.
    dropout = 0.05 if _is_litgpt(src) and finetune in ("lora", "qlora") else _stated_lora_dropout(src)
    lora = LoRA(rank=src.get("lora_rank") or 8, targets=_lora_targets(src.get("lora_targets")), dropout=dropout)
    return Training(finetune=finetune, optimizer=matched[0][1], grad_ckpt=grad_ckpt, lora=lora,
                    framework="litgpt" if _is_litgpt(src) else "transformers", bitsandbytes=bitsandbytes_of(src), peft=peft_of(src),
                    use_reentrant=grad_ckpt != "full" or str(src.get("model")) not in _NON_REENTRANT_MODELS)


# Models whose own (remote) code checkpoints its blocks with use_reentrant=False whatever the trainer asks: hub id -> why.
_NON_REENTRANT_MODELS = {
    "THUDM/glm-4-9b-chat": (
        "modeling_chatglm.py of GLM-4 (June 2024) calls torch.utils.checkpoint.checkpoint(..., use_reentrant=False) "
        "in GLMTransformer.forward; LLaMA-Factory's own use_reentrant setting does not reach it (137c87ff)"),
}


# Sources whose runs used a bitsandbytes that the rows do not state: (repo, path or issue) -> (version, why).
_PINNED_BITSANDBYTES = {
    ("Lightning-AI/litgpt", "config_hub/finetune/README.md"): (
        "0.42.0", ("litgpt pyproject.toml pinned bitsandbytes==0.42.0 from #946 (2024-03-15; #1074 of 2024-03-11 "
                   "had 0.41.0) until #1893 (2024-12-28); the tables came from #1337, #1361 and #1611 (2024-04 to 07)")),
    # the PEFT docs' QLoRA runs need bnb_4bit_quant_storage, first in 0.43.0 (2024-03-08); the QLoRA sections were
    # written at peft 6008f272a (2024-03-13), before 0.43.1, so the runs had 0.43.0, which keeps MatMul4Bit's input
    ("huggingface/peft", "docs/source/accelerate/fsdp.md"): (
        "0.43.0", "bnb_4bit_quant_storage needs 0.43.0; the QLoRA section dates from peft 6008f272a (2024-03-13)"),
    ("huggingface/peft", "docs/source/accelerate/deepspeed.md"): (
        "0.43.0", "bnb_4bit_quant_storage needs 0.43.0; the QLoRA section dates from peft 6008f272a (2024-03-13)"),
    # keyed by the issue: every bitsandbytes release out on the date kept MatMul4Bit's input
    ("hiyouga/LlamaFactory", "issue #4772"): (
        "0.43.1", ("issue opened 2024-07-11; the fix (9e753741, 2024-07-16) was first released in 0.43.2, so any "
                   "release the reporter had was 0.43.1 or older, all of which keep the input")),
}


def bitsandbytes_of(src: dict[str, Any]) -> str:
    """The bitsandbytes release of a row: stated in its text, else its source's pin, else "latest"."""
    return _release_of(src, r"bitsandbytes\s+v?(\d+\.\d+(?:\.\d+)?)", _PINNED_BITSANDBYTES)


def _release_of(src: dict[str, Any], stated: str | None, pins: dict[tuple[str, str], tuple[str, str]]) -> str:
    """A package release of a row: the version the row's text states (`stated`, a pattern whose group 1 is the
    version), else the pin of its source (repository and path, or issue), else "latest"."""
    text = " ".join(str(src.get(key) or "") for key in ("trust", "notes", "framework", "dtype_quant"))
    match = re.search(stated, text, re.IGNORECASE) if stated else None
    if match:
        return match.group(1)
    where = src.get("source")
    if not isinstance(where, dict):
        return "latest"
    pinned = (pins.get((str(where.get("repo")), str(where.get("path"))))
              or pins.get((str(where.get("repo")), str(where.get("issue_or_pr")))))
    return pinned[0] if pinned else "latest"


def _lora_targets(text: Any) -> tuple[str, ...]:
    """Source spellings -> PEFT names: litgpt's 'query,value' are the q and v projections."""
    lowered = re.sub(r"\s*\(.*\)", "", str(text or "q_proj,v_proj")).lower().strip()
    if lowered in {"all", "all-linear", "all linear"}:
        return ("all-linear",)
    names = {"query": "q_proj", "value": "v_proj"}
    return tuple(names.get(part.strip(), part.strip()) for part in lowered.split(",") if part.strip())


def _parallelism(src: dict[str, Any]) -> Parallelism:
    text, gpus = str(src.get("parallelism") or "single GPU"), devices_of(src)
    # Every offloading run in the source offloads parameters too (PEFT's ds_zero3_cpu config offloads
    # optimizer states and parameters; the FSDP rows say "CPU param offload").
    offload: Any = "params" if "offload" in text else "none"
    if text == "single GPU":
        return Parallelism(gpus=1)
    if text.startswith("FSDP"):
        return Parallelism(gpus=gpus, fsdp="full", offload=offload)
    if "ZeRO-3" in text:
        return Parallelism(gpus=gpus, zero_stage=3, offload=offload)
    if text.startswith("tensor parallel"):
        return Parallelism(gpus=gpus, tensor=gpus)
    if text.startswith("pipeline"):
        return Parallelism(gpus=gpus, pipeline=gpus)
    raise Unmappable(f"parallelism {text!r} has no vramfit equivalent")


def devices_of(src: dict[str, Any]) -> int:
    """GPUs the run used: a litgpt hub row's config `devices`, else the source's GPU count.

    The hub README's "Machine" column is the Studio machine, not the run's devices: its 4xA10G LoRA rows (configs
    `devices: 1`) repeat the 1xA10G rows' memory and runtime (falcon-7b 24.84 / 24.94 min), and phi-2/full.yaml
    (`devices: 2`, global 8, micro 4) cannot run on 4 devices: 8 // 4 // 4 = 0 fails litgpt's
    `assert gradient_accumulation_iters > 0` (litgpt/args.py)."""
    config = litgpt_hub_config(src)
    return config.devices if config is not None else int(src["gpus"].get("count") or 1)


def _is_litgpt(src: dict[str, Any]) -> bool:
    return bool(re.search(r"lit-?gpt", str(src.get("framework")), re.IGNORECASE))


def _runtime(src: dict[str, Any]) -> Runtime:
    flash = src.get("flash_attn")
    text = str(flash).lower()
    attention: Any = "flash" if flash is True else "sdpa" if ("sdpa" in text or "default" in text) else "eager"
    return Runtime(name="litgpt" if _is_litgpt(src) else "transformers", attention=attention, torch=torch_of(src))


# Sources whose runs used a torch that the rows do not state: (repo, path) -> (version, why). Each mechanism that
# Runtime.torch switches (settings.TORCH_*) behaves alike for every release before 1.11, so the newest one out
# on the run's date stands for them all.
_PINNED_TORCH = {
    ("huggingface/transformers", "docs/source/en/perf_train_gpu_one.mdx"): (
        "1.10.1", ("the page's nvidia-smi output is dated Tue Jan 11 2022 (driver 460.91.03, CUDA 11.2); the newest "
                   "torch then was 1.10.1 (2021-12-15), 1.11.0 came on 2022-03-10")),
}


# Sources whose runs used a PEFT that the rows do not state: (repo, path) -> (version, why).
_PINNED_PEFT = {
    ("huggingface/peft", path): (
        "0.9.0", ("the sections were written at peft aa2ca83ca (2024-02-26, LoRA) and 6008f272a (2024-03-13, QLoRA), "
                  "between the 0.8.2 and 0.10.0 releases; every release before 0.12.0 gives adapters the base "
                  "weight's dtype (settings.PEFT_ADAPTER_FP32)"))
    for path in ("docs/source/accelerate/fsdp.md", "docs/source/accelerate/deepspeed.md")
}


def peft_of(src: dict[str, Any]) -> str:
    """The PEFT release of a row: its source's pin, else "latest"."""
    return _release_of(src, None, _PINNED_PEFT)


def torch_of(src: dict[str, Any]) -> str:
    """The torch release of a row: stated in its text ("torch 2.1.0"), else its source's pin, else "latest"."""
    return _release_of(src, r"\b(?:py)?torch[ =v]*(\d+\.\d+(?:\.\d+)?)", _PINNED_TORCH)


def catalog_gpu(gpu_type: Any) -> str | None:
    """The vramfit GPU catalog id of a source's GPU name ('Tesla V100-SXM2 16GB' -> v100-16gb, 'A10G 24GB'
    -> a10g), or None for a class of GPUs or an ambiguous name ('A100', '80GB-class')."""
    from vramfit.errors import InvalidSetting
    from vramfit.gpus import lookup

    cleaned = re.sub(r"\(.*?\)|-?SXM\d|Tesla", " ", str(gpu_type or "")).strip()
    for name in (cleaned, re.sub(r"\s*\d+\s*GB$", "", cleaned)):
        try:
            return lookup(name).id if name else None
        except InvalidSetting:
            continue
    return None


def gpu_capacity_bytes(gpu_type: Any) -> int | None:
    """'A100-SXM4 40GB' -> 40 GiB: the first 'NN GB' in the name, read as GiB (vendors' GPU memory sizes
    are binary: an A100 40GB has 40960 MiB). None when the name states no size."""
    match = re.search(r"(\d+)\s*GB", str(gpu_type or ""))
    return int(match.group(1)) * GiB if match else None


def measured(src: dict[str, Any]) -> tuple[str, dict[str, int], bool]:
    """(measure, truth bytes, oom) from what_measured and the measured_* value in its unit."""
    what = str(src.get("what_measured"))
    if src.get("oom") or what == "OOM":
        return "device", {}, True
    measure = _quantity(what)
    value = _bytes(src)
    return measure, {measure: value}, False


def _quantity(what: str) -> str:
    lowered = what.lower()
    if "method unstated" in lowered:
        raise Unmappable(f"what_measured {what!r}: the method is not stated, so the quantity is unknown")
    if "model weights take" in lowered:
        raise Unmappable(f"what_measured {what!r}: the weights alone, not a step's peak")
    if "max_memory_allocated" in lowered or "autoawq" in lowered:
        return "allocated"
    if "torchtitan" in lowered:
        return "reserved"
    if any(word in lowered for word in ("pynvml", "nvidia-smi", "per-gpu")):
        return "device"
    raise Unmappable(f"what_measured {what!r} is not a quantity vramfit knows")


def _bytes(src: dict[str, Any]) -> int:
    for key, unit in (("measured_gb", 10**9), ("measured_gib", GiB), ("measured_mib", MiB)):
        if src.get(key) is not None:
            return round(float(src[key]) * unit)
    if src.get("measured_gb_range"):
        raise Unmappable(f"only a range was published ({src['measured_gb_range']} GB)")
    raise Unmappable("no measured value (measured_gb, measured_gib or measured_mib)")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m vramfit.truth.published SOURCE.jsonl DEST.jsonl", file=sys.stderr)
        return 2
    rows = convert_file(args[0])
    write_rows(args[1], rows)
    unmapped = [row for row in rows if row.unmapped]
    print(f"{len(rows)} rows -> {args[1]}: {len(rows) - len(unmapped)} mapped, {len(unmapped)} unmapped")
    for row in unmapped:
        print(f"  unmapped {row.id}: {row.unmapped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
