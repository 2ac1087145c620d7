"""finetune's model: the base (4-bit NF4 with --use_qlora) and its tokenizer, the PEFT wrap, the optimizer.

The PEFT config comes from the method registry (`open_instruct.peft_methods`), as does the QLoRA recipe.
"""

from __future__ import annotations

import torch
from accelerate.logging import get_logger
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from open_instruct.cli import UsageError
from open_instruct.peft_methods import (
    build_peft_config,
    describe_peft_config,
    qlora_compute_dtype,
    qlora_quantization_config,
)

logger = get_logger(__name__)


def load_model_and_tokenizer(args, accelerator):
    """The base model (4-bit NF4 with --use_qlora) and its tokenizer, with a pad token and room for it."""
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path, token=args.token)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    kwargs = {"token": args.token} | compatibility_kwargs(args, accelerator.device.type == "cuda")
    if args.use_qlora:
        on_gpu = accelerator.device.type == "cuda"
        compute_dtype = qlora_compute_dtype(on_gpu)
        kwargs.update(dtype=compute_dtype, device_map={"": accelerator.local_process_index if on_gpu else "cpu"},
                      quantization_config=qlora_quantization_config(compute_dtype))
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **kwargs)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # the new <pad> row is never a training target
    model.config.use_cache = False
    if args.use_qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def compatibility_kwargs(args, on_gpu: bool) -> dict:
    """from_pretrained arguments for open-instruct's model flags (--config_name, --use_flash_attn); the two flags
    that change nothing under transformers 5 say so in the log."""
    from transformers import AutoConfig

    kwargs = {}
    if args.config_name:
        kwargs["config"] = AutoConfig.from_pretrained(args.config_name, token=args.token)
    if args.use_flash_attn:
        import importlib.util

        if on_gpu and importlib.util.find_spec("flash_attn") is not None:
            kwargs["attn_implementation"] = "flash_attention_2"
        else:
            logger.info("--use_flash_attn: flash-attn is not installed or there is no GPU; keeping the default "
                        "attention (same results, more memory)")
    if args.use_slow_tokenizer:
        logger.info("--use_slow_tokenizer changes nothing: transformers 5 has one tokenizer class per model")
    if args.low_cpu_mem_usage:
        logger.info("--low_cpu_mem_usage changes nothing: transformers 5 always loads weights that way")
    return kwargs


def wrap_with_peft(model, args) -> tuple[torch.nn.Module, dict | None]:
    """The model with the --peft_method adapter on its --lora_target_modules (untouched for a full fine-tune),
    and the adapter's settings as all_results.json records them."""
    if not args.use_lora:
        return model, None
    peft_config = build_peft_config(args)
    try:
        wrapped = get_peft_model(model, peft_config)
    except ValueError as err:  # a setting the model's shapes cannot take (MoS pool too small, no such target, ...)
        raise UsageError(f"--peft_method {args.peft_method} on {args.model_name_or_path}: {err}") from err
    return wrapped, describe_peft_config(peft_config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as unpacked, ZeRO-3 shards at their full size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    sizes = [(p.ds_numel if hasattr(p, "ds_numel") else p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trainable in sizes if trainable), sum(n for n, _ in sizes)


def build_optimizer(model, args, fused: bool = True):
    """AdamW with no decay on biases and norm weights: torch's fused kernel (one pass over all parameters, as HF
    Trainer's default ``adamw_torch_fused``) unless ``fused`` is off (DeepSpeed steps its own partitions). As
    open-instruct, QLoRA uses bitsandbytes' paged AdamW (32-bit, 8-bit with --use_8bit_optimizer);
    --use_paged_optimizer / --use_8bit_optimizer ask for it alone."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "norm" in name else decay).append(param)
    groups = [{"params": params, "weight_decay": wd} for params, wd in ((decay, args.weight_decay), (no_decay, 0.0))
              if params]  # DeepSpeed drops empty groups, which would desynchronise the LR scheduler
    paged = args.use_paged_optimizer or args.use_qlora
    if paged or args.use_8bit_optimizer:
        import bitsandbytes as bnb

        return bnb.optim.AdamW(groups, lr=args.learning_rate, optim_bits=8 if args.use_8bit_optimizer else 32,
                               is_paged=paged)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = fused and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=fused or None)


