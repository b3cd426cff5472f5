"""Training frameworks: what each one does that changes the peak, as a profile of named behaviours.

A profile only lists behaviours that move memory; everything else is PyTorch's and modelled elsewhere. Adding
a framework is adding a profile.

- transformers (Trainer + PEFT), the default. Logits in the model dtype, upcast inside the loss
  (transformers/loss/loss_utils.py ForCausalLMLoss `logits.float()`); full-vocabulary cross-entropy; LoRA
  adapters created in fp32 (peft `get_peft_model(autocast_adapter_dtype=True)` upcasts fp16/bf16 adapters,
  peft/tuners/tuners_utils.py `cast_adapter_dtype`); gradient checkpointing with `use_reentrant=True`
  (transformers/modeling_utils.py gradient_checkpointing_enable), which saves each block's input only;
  `zero_grad(set_to_none=True)` after each step; `use_cache=True` stays on in training (models/llama
  modeling_llama.py creates a DynamicCache whenever use_cache and no cache is passed), off under checkpointing.
- torchtune. The decoder returns fp32 logits (torchtune/modules/transformer.py `self.output(h).float()`) unless
  the recipe uses CEWithChunkedOutputLoss, which every shipped recipe config does: the head runs on 8 chunks
  (`num_output_chunks = 8`, torchtune/modules/loss/ce_chunked_output_loss.py) and each chunk is upcast alone;
  LoRA adapters in the model dtype (torchtune/modules/peft/lora.py builds them with the base's dtype);
  activation offloading (`enable_activation_offloading`, torchtune/training/_activation_offloading.py) moves
  saved activations to pinned host memory; the optimizer step fused into backward (`optimizer_in_bwd`,
  torchtune/training/memory.py) frees each gradient right after its parameter's update.
- litgpt (Lightning-AI/litgpt finetune/lora.py, full.py): `model(input_ids, lm_head_chunk_size=128)` returns
  the logits as a list of 128-token chunks, which Fabric's `_FabricModule.forward` (lightning/fabric/wrappers.py)
  passes through the precision plugin's `convert_output`: with "bf16-true"/"16-true" (HalfPrecision),
  "bf16-mixed"/"16-mixed" (MixedPrecision, plugins/precision/amp.py) and bitsandbytes (BitsandbytesPrecision) that is `apply_to_collection(data, ..., dst_type=torch.get_default_dtype())`,
  outside the forward's dtype context, so fp32 copies (Lightning 71aed751 = 2.1.0rc0, and unchanged at
  Lightning HEAD 7f0c3436); `chunked_cross_entropy` (litgpt/utils.py) takes the loss of each chunk on those
  fp32 copies (its log_softmax saves T x V x 4), and the loop keeps `logits` alive until after
  `fabric.backward(loss)`; litgpt's CausalSelfAttention (lit_gpt/model.py at 8641822, litgpt/model.py at
  00af8b0d) computes q|k|v with one `attn` linear, views and permutes it, and for multi-head attention passes
  v to SDPA as a view of that output while q and k are rotary's `torch.cat` copies: SDPA saves v, so the
  whole q|k|v output stays alive (grouped-query attention expands and reshapes k and v, which copies them);
  LoRA on q, k, v is one LoRAQKVLinear (lora.py): one `lora_dropout(x)` feeds lora_A, and `zero_pad` scatters
  the adapted columns with `index_copy`, whose derivative (tools/autograd/derivatives.yaml index_copy:
  `grad.index_select(dim, index).expand_as(source)`) saves the source, tokens x the adapted widths; its GPT model calls `torch.nn.functional.gelu(approximate=...)` directly;
  with precision "bf16-true" the LoRA adapters are bf16 like the rest. (The chunk count is the sequence over
  128; vramfit models it as 8 slices, which only moves the per-chunk transient.) Gradient accumulation runs
  the accumulating micro-steps under `fabric.no_backward_sync(model, enabled=is_accumulating)` (finetune/lora.py,
  full.py), which under FSDP is `module.no_sync()` (lightning/fabric/strategies/fsdp.py
  _FSDPBackwardSyncControl), and FSDP then "will accumulate the full model gradients (instead of gradient shards)
  until the eventual sync" (torch/distributed/fsdp/fully_sharded_data_parallel.py, FSDP.no_sync): with
  grad_accum > 1 every rank holds unsharded gradients. Tied embeddings are untied: the checkpoint converter copies
  the token table into `lm_head.weight` when the checkpoint has none (litgpt/scripts/convert_hf_checkpoint.py
  `state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"]`), GPT keeps `lm_head` a separate
  nn.Linear, and only pretrain.py re-ties (`train.tie_embeddings`; the finetune scripts reject it), so a tied
  model (Gemma, ...) fine-tunes with a second vocabulary-sized matrix. `logits` and `loss` are loop variables
  (finetune/lora.py fit at 8641822 and 00af8b0d: `logits = model(...)`, `loss = chunked_cross_entropy(...)`,
  `fabric.backward(...)`), rebound only once the next step's forward has run, so each step's autograd graph
  lives through the optimizer step into the next forward. QLoRA (`--quantize bnb.nf4`) wraps the model in
  Lightning's BitsandbytesPrecision with no ignore_modules, so `lm_head` is a 4-bit linear too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Framework:
    """name; loss_chunks: slices of the head and loss (1: the whole sequence at once); fp32_logits: the model
    returns fp32 logits; adapter_fp32: LoRA adapters kept in fp32; optimizer_in_backward: gradients freed as
    soon as their parameter is updated; kv_cache_in_training: the forward also fills a KV cache;
    native_activations: activation functions are single PyTorch ops (F.gelu(approximate="tanh")) rather than
    transformers' Python compositions (NewGELUActivation); logits_kept: the training loop holds the logits
    through backward; fp32_loss: the loss upcasts the logits to fp32; expand_kv: grouped k and v heads are
    expanded to every query head before attention; fsdp_unit_gradients: FSDP wraps units that mix frozen and
    trainable parameters (FSDP1, use_orig_params=True), so every parameter of such a unit gets a gradient;
    tp_plan: tensor parallelism is transformers' own `tp_plan="auto"` (models/*/configuration_*.py
    base_model_tp_plan: attention heads and the MLP width split colwise/rowwise, no sequence parallelism so the
    hidden-sized activations stay whole on every rank, embed_tokens whole, lm_head `colwise_gather_output`
    so every rank gets the full-vocabulary logits) instead of Megatron's layout with sequence parallelism;
    fsdp_no_sync: gradient accumulation under FSDP uses FSDP.no_sync(), which keeps the gradients unsharded;
    untied_head: the framework's model has its own output matrix even where config.json ties it to the embedding;
    quantized_head: QLoRA quantizes the output head with the blocks' linears (Lightning BitsandbytesPrecision
    replaces every nn.Linear); graph_kept: the training loop keeps the step's loss and logits, and so its autograd
    graph, referenced until the next step's forward has made new ones (what autograd frees in backward is gone,
    but tensors a custom Function keeps on ctx, bitsandbytes < 0.43.2's 4-bit inputs, live on);
    fp32_output: the training wrapper casts every floating tensor the model returns to fp32 after the forward
    (Lightning Fabric's HalfPrecision, MixedPrecision and BitsandbytesPrecision `convert_output`), so the logits reach the loss,
    and stay referenced by the loop, in fp32; qkv_view: q, k and v come from one fused linear and, with as many
    kv heads as query heads, v reaches attention as a view of its output while q and k are new tensors (rotary's
    torch.cat), so the attention kernel's saved v keeps the whole q|k|v output alive; qkv_lora: LoRA on q, k
    and v is one module on the fused linear (litgpt LoRAQKVLinear): one lora_dropout for all of them, and when
    not all three are adapted its zero_pad `index_copy` saves its source (tokens x the adapted widths);
    fsdp_flat_root: FSDP is FSDP1 with only the blocks wrapped, so the root unit (embedding, final norm, head) is
    one flat parameter whose gradient one split backward makes at the end (training._flat_root_grads);
    behaviours: the sentences --explain prints."""

    name: str
    loss_chunks: int
    fp32_logits: bool
    adapter_fp32: bool
    optimizer_in_backward: bool
    kv_cache_in_training: bool
    native_activations: bool
    logits_kept: bool
    fp32_loss: bool
    expand_kv: bool
    fsdp_unit_gradients: bool
    tp_plan: bool = False
    fsdp_no_sync: bool = False
    untied_head: bool = False
    quantized_head: bool = False
    graph_kept: bool = False
    fp32_output: bool = False
    qkv_view: bool = False
    qkv_lora: bool = False
    fsdp_flat_root: bool = False
    behaviours: tuple[str, ...]


TRANSFORMERS = Framework(
    name="transformers", loss_chunks=1, fp32_logits=False, adapter_fp32=True, optimizer_in_backward=False,
    kv_cache_in_training=True, native_activations=False, logits_kept=False, fp32_loss=True,
    expand_kv=False, fsdp_unit_gradients=False, tp_plan=True, fsdp_no_sync=True,
    behaviours=("the forward builds a DynamicCache (use_cache=True) unless gradient checkpointing is on",
                "logits in the model dtype, upcast to fp32 inside the loss (ForCausalLMLoss)",
                "full-vocabulary cross-entropy",
                "PEFT LoRA adapters upcast to fp32 (autocast_adapter_dtype=True)",
                "gradient checkpointing saves each block's input (use_reentrant=True unless --non-reentrant)",
                "tensor parallelism by the model's tp_plan: no sequence parallelism, full logits on every rank",
                ("gradient accumulation under FSDP runs every micro-batch but the last in no_sync (Trainer "
                 "trainer.py, transformers 5.23 lines 1896-1907: accelerator.no_sync, or FSDP2's "
                 "set_requires_gradient_sync(False)): gradients stay unsharded until the sync step")))

TORCHTUNE = Framework(
    name="torchtune", loss_chunks=8, fp32_logits=True, adapter_fp32=False, optimizer_in_backward=False,
    kv_cache_in_training=False, native_activations=True, logits_kept=False, fp32_loss=True,
    expand_kv=False, fsdp_unit_gradients=False, behaviours=("fp32 logits from the decoder (self.output(h).float())",
                "chunked cross-entropy over 8 slices (CEWithChunkedOutputLoss)",
                "LoRA adapters in the model dtype",
                "activation offloading to host memory when --activation-offload is set",
                "optimizer step in backward available (optimizer_in_bwd)"))

LITGPT = Framework(
    name="litgpt", loss_chunks=8, fp32_logits=False, adapter_fp32=False, optimizer_in_backward=False,
    kv_cache_in_training=False, native_activations=True, logits_kept=True, fp32_loss=False,
    expand_kv=True, fsdp_unit_gradients=True, fsdp_no_sync=True, untied_head=True, quantized_head=True,
    graph_kept=True, fp32_output=True, qkv_view=True, qkv_lora=True, fsdp_flat_root=True,
    behaviours=("tied embeddings untied: lm_head is its own copy of the token table (convert_hf_checkpoint)",
                "FSDP1 (use_orig_params=True) wraps whole blocks: LoRA blocks keep frozen-weight gradients too",
                "gradient accumulation under FSDP runs in no_sync (fabric.no_backward_sync): gradients stay unsharded",
                ("FSDP1 root unit (embedding, norm, head) is one flat parameter: the head's gradient waits for the "
                 "embedding's, then both are concatenated (Lightning FSDPStrategy, torch fsdp/_flat_param.py)"),
                "k and v expanded to all query heads for training (litgpt/model.py)",
                "head run in 128-token chunks (model(input_ids, lm_head_chunk_size=128))",
                "logits cast to fp32 by Fabric after the forward (precision plugin convert_output)",
                "cross-entropy per chunk on those fp32 logits (litgpt/utils.py chunked_cross_entropy)",
                "the logits stay referenced through backward (finetune/lora.py fit: logits, loss, backward)",
                "multi-head attention's v is a view of the fused qkv output: SDPA keeps all of it (litgpt/model.py)",
                "LoRA on q, k, v is one LoRAQKVLinear: one dropout, zero_pad's index_copy keeps its source",
                "logits and loss are loop variables: the step's graph lives until the next forward has run",
                "QLoRA quantizes lm_head too (Lightning BitsandbytesPrecision converts every nn.Linear)",
                "activation functions as single PyTorch ops (gelu approximate='tanh')",
                "LoRA adapters in the model dtype (bf16-true)"))

PROFILES = {profile.name: profile for profile in (TRANSFORMERS, TORCHTUNE, LITGPT)}


def framework(name: str) -> Framework:
    """The profile for --framework `name` (Settings.validate has already checked the name)."""
    return PROFILES[name]
