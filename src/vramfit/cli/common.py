"""Flags shared by every command that takes a model and a workload (estimate, trace, measure, fit, ...).

Every flag's help states its unit and default. `settings_from_args` is the one place that turns flags into
`vramfit.settings.Settings`; `model_from_args` the one place that turns MODEL (or --params) into a Model.
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from vramfit.errors import InvalidSetting
from vramfit.model.loaded import Model
from vramfit.settings import (
    DEEPSPEED_MAX_LIVE_PARAMETERS,
    DEEPSPEED_REDUCE_BUCKET,
    FRAMEWORKS,
    KV_DTYPES,
    OPTIMIZERS,
    RUNTIMES,
    LoRA,
    Parallelism,
    Precision,
    Runtime,
    Settings,
    Training,
    Workload,
)
from vramfit.units import parse_bytes, parse_count


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="hub id or catalog id (meta-llama/Llama-3.1-8B), a config.json path, or a model folder; "
                             "leave out and pass --params to describe a model by its numbers")
    group = parser.add_argument_group("model by numbers (as the textbooks do)")
    group.add_argument("--params", help="parameter count, e.g. 7B or 350M; unstated dimensions get a standard "
                                        "decoder shape and the output lists them as assumed (default: none)")
    group.add_argument("--hidden-size", type=int, help="model width (default: derived from --params)")
    group.add_argument("--layers", type=int, help="transformer layers (default: derived from --params)")
    group.add_argument("--heads", type=int, help="attention heads (default: hidden size / 128)")
    group.add_argument("--kv-heads", type=int, help="key/value heads (default: equal to --heads)")
    group.add_argument("--intermediate-size", type=int, help="MLP width (default: SwiGLU 8/3 x hidden, rounded)")
    group.add_argument("--vocab-size", type=int, help="vocabulary size (default: 32000)")
    group.add_argument("--allow-network", action="store_true",
                       help="allow reading config.json and safetensors headers from the Hugging Face hub "
                            "(default: off; the catalog and the local cache are always tried first)")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    work = parser.add_argument_group("workload")
    work.add_argument("--mode", choices=("inference", "training"), default="inference",
                      help="inference (serving) or a training step (default: inference)")
    work.add_argument("--batch-size", type=int, default=1,
                      help="sequences per GPU per step; training: the micro-batch (default: 1)")
    work.add_argument("--seq-len", type=int, default=2048,
                      help="tokens per sequence; inference: prompt plus generated tokens (default: 2048)")
    work.add_argument("--new-tokens", type=int, default=0,
                      help="inference: of --seq-len, tokens generated (default: 0, a prefill-only forward)")
    work.add_argument("--num-beams", type=int, default=1, help="beam search width (default: 1)")
    work.add_argument("--num-return-sequences", type=int, default=1,
                      help="sequences returned per prompt (default: 1)")
    work.add_argument("--prefill-chunk", type=int, help="chunked prefill: tokens per forward (default: whole prompt)")
    work.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default: 1)")

    prec = parser.add_argument_group("precision")
    prec.add_argument("--dtype", choices=("fp32", "fp16", "bf16"),
                      help="weight dtype, and compute dtype without --amp (default: the model's own, as "
                           "transformers' dtype='auto': config.json's dtype, else the stored safetensors "
                           "dtype; bf16 when neither says)")
    prec.add_argument("--amp", choices=("bf16", "fp16"),
                      help="training: automatic mixed precision with fp32 master weights (default: off)")
    prec.add_argument("--quant", help="weight quantization format, e.g. bnb-nf4, bnb-int8, gptq-4bit, awq, fp8, "
                                      "gguf-Q4_K_M; with --finetune qlora: bnb-nf4 or bnb-nf4-dq (default: none, "
                                      "or the config's quantization_config; QLoRA: bnb-nf4)")
    prec.add_argument("--kv-dtype", choices=KV_DTYPES, default="auto",
                      help="KV cache dtype (default: auto, the compute dtype)")

    train = parser.add_argument_group("training")
    train.add_argument("--finetune", choices=("full", "lora", "qlora", "dora"), default="full",
                       help="fine-tuning method (default: full)")
    train.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r (default: 8)")
    train.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (default: 16)")
    train.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout probability (default: 0)")
    train.add_argument("--lora-targets", default="q_proj,v_proj",
                       help="comma list of PEFT module names, or all-linear (default: q_proj,v_proj)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                       help="optimizer (default: adamw, PyTorch's foreach implementation)")
    train.add_argument("--grad-ckpt", choices=("none", "full", "selective"), default="none",
                       help="gradient (activation) checkpointing (default: none)")
    train.add_argument("--activation-offload", action="store_true",
                       help="offload saved activations to host memory (default: off)")
    train.add_argument("--frozen-layers", type=int, default=0, help="first N layers frozen (default: 0)")
    train.add_argument("--framework", choices=FRAMEWORKS, default="transformers",
                       help="training framework whose behaviour to model (default: transformers Trainer)")
    train.add_argument("--bitsandbytes", default="latest", metavar="VERSION",
                       help="QLoRA: the bitsandbytes release, e.g. 0.42.0; before 0.43.2 every 4-bit linear kept its "
                            "input until backward (default: latest)")
    train.add_argument("--peft", default="latest", metavar="VERSION",
                       help="LoRA with transformers: the PEFT release, e.g. 0.10.0; before 0.12.0 the adapters take the "
                            "base weight's dtype instead of fp32 (default: latest)")
    train.add_argument("--non-reentrant", action="store_true",
                       help="full checkpointing runs torch.utils.checkpoint with use_reentrant=False "
                            "(gradient_checkpointing_kwargs, or a model's own code such as GLM-4's modeling_chatglm.py); "
                            "with bitsandbytes < 0.43.2 every block's 4-bit inputs then stay until backward "
                            "(default: reentrant, transformers' default)")

    par = parser.add_argument_group("GPUs and parallelism")
    par.add_argument("--gpus", type=int, default=1, help="GPUs in all (default: 1)")
    par.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default: 1)")
    par.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default: 1)")
    par.add_argument("--cp", type=int, default=1, help="context-parallel size (default: 1)")
    par.add_argument("--ep", type=int, default=1, help="expert-parallel size (default: 1)")
    par.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0, help="ZeRO stage (default: 0)")
    par.add_argument("--fsdp", choices=("none", "full", "shard-grad-op", "hybrid"), default="none",
                     help="FSDP sharding strategy (default: none)")
    par.add_argument("--offload", choices=("none", "optimizer", "params"), default="none",
                     help="offload optimizer states, or parameters too, to --offload-target (default: none)")
    par.add_argument("--offload-target", choices=("cpu", "nvme"), default="cpu",
                     help="where offloaded state lives (default: cpu)")
    par.add_argument("--zero-bucket", default=str(DEEPSPEED_REDUCE_BUCKET), metavar="ELEMENTS",
                     help="DeepSpeed ZeRO reduce_bucket_size: a gradient buffer of this many elements (persistent "
                          f"under ZeRO-3, during backward under ZeRO-1/2; {DEEPSPEED_REDUCE_BUCKET} or 500M); auto = "
                          f"hidden x hidden, as the HF Trainer and accelerate fill \"auto\" (default: "
                          f"{DEEPSPEED_REDUCE_BUCKET}, DeepSpeed's own)")
    par.add_argument("--zero-live", default=str(DEEPSPEED_MAX_LIVE_PARAMETERS), metavar="ELEMENTS",
                     help="DeepSpeed ZeRO-3 stage3_max_live_parameters: its prefetch keeps this many unsharded "
                          f"parameter elements gathered, plus one parameter (default: {DEEPSPEED_MAX_LIVE_PARAMETERS} "
                          "or 1B, DeepSpeed's own)")
    par.add_argument("--gpu", help="GPU name from the catalog, e.g. H100-80GB, RTX-4090 (default: none)")
    par.add_argument("--gpu-memory", help="GPU capacity, e.g. 24GiB or 80GB (default: the --gpu's)")

    run = parser.add_argument_group("runtime")
    run.add_argument("--runtime", choices=RUNTIMES, default="transformers",
                     help="inference runtime (default: transformers)")
    run.add_argument("--attention", choices=("eager", "sdpa", "flash"), default="sdpa",
                     help="attention implementation (default: sdpa)")
    run.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                     help="vLLM: fraction of GPU memory it pre-allocates (default: 0.9)")
    run.add_argument("--block-size", type=int, default=16, help="vLLM: KV-cache block size in tokens (default: 16)")
    run.add_argument("--n-gpu-layers", type=int, help="llama.cpp: layers on the GPU (default: all)")
    run.add_argument("--max-num-seqs", type=int, help="vLLM: concurrent sequences (default: vLLM's 256)")
    run.add_argument("--draft-model", help="speculative decoding: the draft model (hub id or path; default: none)")
    run.add_argument("--torch", default="latest", metavar="VERSION",
                     help="the PyTorch release, e.g. 1.10.1: before 1.13 the CUDA context loads every kernel, before "
                          "1.11 softmax keeps its input, before 2.0 zero_grad keeps the gradients (default: latest)")


def _zero_bucket(text: str) -> int | Literal["auto"]:
    """--zero-bucket: auto, or a count of elements (500000000, 500M)."""
    return "auto" if text == "auto" else parse_count(text, field="--zero-bucket")


def settings_from_args(args: argparse.Namespace, model: Model | None = None) -> Settings:
    """The one mapping from flags to Settings; raises InvalidSetting naming the flag on bad values.
    Without --dtype, the weights take `model.weight_dtype` where a model is given (see
    `vramfit.estimate.resolve_settings`); without a model, dtype stays "auto" until an estimate resolves it."""
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    gpu_memory = parse_bytes(args.gpu_memory, field="--gpu-memory") if args.gpu_memory else None
    settings = Settings(
        workload=Workload(mode=args.mode, batch_size=args.batch_size, seq_len=args.seq_len,
                          new_tokens=args.new_tokens, grad_accum=args.grad_accum, num_beams=args.num_beams,
                          num_return_sequences=args.num_return_sequences, prefill_chunk=args.prefill_chunk),
        precision=Precision(dtype=args.dtype or "auto", amp=args.amp,
                            quant=args.quant, kv_dtype=args.kv_dtype),
        training=Training(finetune=args.finetune, optimizer=args.optimizer, grad_ckpt=args.grad_ckpt,
                          activation_offload=args.activation_offload, frozen_layers=args.frozen_layers,
                          framework=args.framework, bitsandbytes=args.bitsandbytes, peft=args.peft,
                          use_reentrant=not args.non_reentrant,
                          lora=LoRA(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                    targets=targets)),
        parallelism=Parallelism(gpus=args.gpus, tensor=args.tp, pipeline=args.pp, context=args.cp,
                                expert=args.ep, zero_stage=args.zero, fsdp=args.fsdp, offload=args.offload,
                                offload_target=args.offload_target, zero_bucket=_zero_bucket(args.zero_bucket),
                                zero_live=parse_count(args.zero_live, field="--zero-live")),
        runtime=Runtime(name=args.runtime, attention=args.attention,
                        gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size,
                        n_gpu_layers=args.n_gpu_layers, max_num_seqs=args.max_num_seqs,
                        draft_model=args.draft_model, torch=args.torch),
        gpu=args.gpu, gpu_memory=gpu_memory)
    if model is not None:
        from vramfit.estimate import resolve_settings

        settings = resolve_settings(settings, model)
    return settings.validate()


def model_from_args(args: argparse.Namespace) -> Model:
    """MODEL (hub id, catalog id, config.json, folder) or --params with optional dimensions."""
    if args.params:
        if args.model:
            raise InvalidSetting("--params: give either MODEL or --params, not both")
        from vramfit.model.numbers import model_from_numbers

        dims: dict[str, Any] = {name: getattr(args, name) for name in
                                ("hidden_size", "layers", "heads", "kv_heads", "intermediate_size", "vocab_size")}
        return model_from_numbers(parse_count(args.params, field="--params"), **dims)
    if not args.model:
        raise InvalidSetting("MODEL: missing; pass a hub id, config.json or folder, or describe it with --params 7B")
    from vramfit.model.sources import load_model

    return load_model(args.model, allow_network=args.allow_network)
