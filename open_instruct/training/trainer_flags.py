"""The PRoLoRA authors' training command lines (their ``ft_*.sh``), read by ``finetune.py``.

The authors trained with a Hugging Face ``Trainer`` script, so their scripts spell booleans as values
(``--use_lora True``) and use ``TrainingArguments`` names (``--max_steps``, ``--max_grad_norm``, ``--optim``,
``--save_steps``, ...). :func:`translate` rewrites such a command line into ``finetune.py``'s flags before argparse
sees it, so ``python -m open_instruct.finetune`` followed by their flag set runs as they ran it:

* renamed flags (:data:`RENAMED`) take their value to our flag;
* ``--<flag> True|False`` of one of our switches becomes ``--<flag>`` or nothing; ``--enable_lora_rotation False``
  becomes ``--no_lora_rotation``, ``--use_fast_tokenizer False`` ``--use_slow_tokenizer``;
* ``--optim`` picks the optimizer flags (:data:`OPTIMIZERS`);
* ``Trainer`` settings that describe what this loop always does (:data:`ALWAYS`, e.g. ``--do_train True``,
  ``--save_strategy steps``) are accepted when they have that value, with a log line; any other value is an error
  (the loop cannot do it), as is a flag neither side knows.

Our own flags pass through unchanged, so a command line may mix both spellings.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")

# Trainer name -> finetune.py name (same meaning, value passed on).
RENAMED = {
    "--max_steps": "--max_train_steps",
    "--max_grad_norm": "--clip_grad_norm",
    "--save_steps": "--checkpointing_steps",
    "--save_total_limit": "--checkpoints_total_limit",
    "--max_eval_samples": "--eval_split_size",  # the authors hold this many training examples out for eval_loss
}
# Our switches that the authors' scripts give a True/False value.
SWITCHES = ("--use_lora", "--use_qlora", "--bf16", "--gradient_checkpointing", "--group_by_length",
            "--use_flash_attn", "--overwrite_cache", "--low_cpu_mem_usage", "--use_slow_tokenizer",
            "--with_tracking", "--use_paged_optimizer", "--use_8bit_optimizer")
# Switches whose False value is one of our flags.
INVERTED = {"--enable_lora_rotation": "--no_lora_rotation", "--use_fast_tokenizer": "--use_slow_tokenizer"}
OPTIMIZERS = {"adamw_torch": [], "adamw_hf": [], "paged_adamw_32bit": ["--use_paged_optimizer"],
              "paged_adamw_8bit": ["--use_paged_optimizer", "--use_8bit_optimizer"],
              "adamw_bnb_8bit": ["--use_8bit_optimizer"], "adamw_8bit": ["--use_8bit_optimizer"]}
# Trainer settings this loop always has: flag -> (accepted values, what the loop does instead).
ALWAYS = {
    "--do_train": (TRUE, "finetune.py always trains"),
    "--do_eval": (TRUE + FALSE, "eval_loss is computed whenever there is a held-out set"),
    "--evaluation_strategy": (("steps", "no"), "eval_loss every --eval_steps steps"),
    "--save_strategy": (("steps",), "checkpoints every --checkpointing_steps steps"),
    "--logging_strategy": (("steps",), "logs every --logging_steps steps"),
    "--overwrite_output_dir": (TRUE, "--output_dir is replaced as a whole when the run completes"),
    "--streaming": (FALSE, "the training file is read whole"),
    "--remove_unused_columns": (TRUE, "only the encoded columns are kept"),
    "--prediction_loss_only": (TRUE + FALSE, "evaluation computes the loss only"),
    "--tf32": (TRUE + FALSE, "TF32 matmuls follow PyTorch's defaults"),
    "--torch_dtype": (("bfloat16", "float16", "float32", "auto"),
                      "the weights' dtype follows --use_qlora / --mixed_precision"),
    "--per_device_eval_batch_size": (None, "eval_loss uses --per_device_train_batch_size"),
    # pinned by asserts in the authors' code (True / False), so they select nothing there either
    "--enable_lora_vec": (TRUE, "the authors' code asserts it is True; it selects nothing"),
    "--init2zero_via_vec": (FALSE, "the authors' code asserts it is False; B starts at zero"),
}
LORA_MODULES = {"all": None}  # --lora_modules all: the seven Llama projections (finetune.py's default targets)


def _bool(flag: str, value: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ValueError(f"{flag} expects True or False, got {value!r}")


def translate(argv: list[str]) -> list[str]:
    """``argv`` with the authors' Trainer-style flags rewritten into finetune.py's (see the module docstring).

    Raises ValueError naming the flag for a value this loop cannot honour.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        has_value = bool(eq) or (i + 1 < len(argv) and not argv[i + 1].startswith("--"))
        value = inline if eq else (argv[i + 1] if has_value else None)
        step = 1 if eq or not has_value else 2
        if flag in RENAMED:
            out += [RENAMED[flag]] + ([value] if value is not None else [])
        elif flag in SWITCHES and value is not None and value.lower() in TRUE + FALSE:
            out += [flag] if _bool(flag, value) else []
        elif flag in INVERTED and value is not None:
            out += [] if _bool(flag, value) else [INVERTED[flag]]
        elif flag == "--optim" and value is not None:
            if value not in OPTIMIZERS:
                raise ValueError(f"--optim {value!r} is not supported (one of {', '.join(OPTIMIZERS)})")
            out += OPTIMIZERS[value]
        elif flag == "--lora_modules" and value is not None:
            if value not in LORA_MODULES:
                raise ValueError(f"--lora_modules {value!r}: only 'all' is known; use --lora_target_modules")
        elif flag in ALWAYS and value is not None:
            accepted, instead = ALWAYS[flag]
            if accepted is not None and value.lower() not in accepted:
                raise ValueError(f"{flag} {value} is not supported: {instead}")
            logger.info("%s %s accepted for compatibility with the authors' scripts: %s", flag, value, instead)
        else:
            out.append(arg)
            step = 1
        i += step
    return out
