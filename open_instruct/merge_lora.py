"""Merge a trained LoRA / PRoLoRA adapter into its base model and save a plain transformers checkpoint.

    python -m open_instruct.merge_lora --lora_model_name_or_path output/run \\
        [--base_model_name_or_path meta-llama/Llama-2-7b-hf] [--output_dir output/run/lora_merged] \\
        [--qlora] [--save_tokenizer] [--tokenizer_name_or_path PATH]

The merged weight of every adapted layer is ``W0 + (alpha / r) * B @ A`` (PRoLoRA first rebuilds its full A and
B from the shared chunks), so the merged model computes what base + adapter computed, with no adapter code.

With ``--qlora`` the base is loaded exactly as QLoRA training saw it — 4-bit NF4 with double quantisation —
and every 4-bit linear layer is dequantised (bitsandbytes ``dequantize_4bit``) before the adapter is added:
the merged model holds ``dequant(NF4(W0)) + ΔW``, the weights the adapter was trained against, as the PRoLoRA
authors did. The dequantised model uses the QLoRA compute dtype: bfloat16 on a GPU, float32 on CPU.

If the tokenizer (taken from ``--tokenizer_name_or_path``, else the adapter folder, else the base) has more
tokens than the base's embedding matrix (e.g. the ``<pad>`` token finetune adds), the embeddings are resized
first, as in training. The output folder is written under a temporary name and renamed when complete.

Everything is checked before a model is loaded: the adapter folder, the base and tokenizer sources, and the
output folder, which may not be, contain or be inside the adapter folder's own files (a new subfolder such as
the default ``lora_merged`` is fine), and must be new or empty unless ``--overwrite`` replaces it as a whole.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from open_instruct.base_quantization import load_dequantized_base
from open_instruct.cli import (
    ArgumentParser,
    UsageError,
    check_model_source,
    check_output_dir,
    check_safetensors,
    read_json_file,
)
from open_instruct.cli import run as run_cli
from open_instruct.io_utils import atomic_dir

logger = logging.getLogger(__name__)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description="Merge a LoRA/PRoLoRA adapter into its base model.")
    p.add_argument("--lora_model_name_or_path", required=True, help="folder of the trained adapter")
    p.add_argument("--base_model_name_or_path", help="default: the base recorded in adapter_config.json")
    p.add_argument("--tokenizer_name_or_path", help="default: the adapter folder if it has a tokenizer, else the base")
    p.add_argument("--output_dir", help="default: <lora_model_name_or_path>/lora_merged")
    p.add_argument("--qlora", action="store_true", help="merge into the dequantised 4-bit NF4 base (QLoRA runs)")
    p.add_argument("--save_tokenizer", action="store_true", help="also save the tokenizer with the merged model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --output_dir as a whole")
    return p.parse_args(argv)


def check_inputs(args) -> Path:
    """The adapter folder, base and tokenizer sources and the output folder; returns the output folder."""
    adapter_dir = Path(args.lora_model_name_or_path)
    flag = f"--lora_model_name_or_path {args.lora_model_name_or_path}"
    if not adapter_dir.is_dir():
        raise UsageError(f"{flag}: no such folder")
    config = read_json_file(adapter_dir / "adapter_config.json", f"{flag}: adapter_config.json")
    if "peft_type" not in config:
        raise UsageError(f"{flag}: adapter_config.json has no peft_type (not a PEFT adapter)")
    weights = [adapter_dir / name for name in ADAPTER_WEIGHTS if (adapter_dir / name).is_file()]
    if not weights:
        raise UsageError(f"{flag}: no {' or '.join(ADAPTER_WEIGHTS)} in that folder")
    if weights[0].suffix == ".safetensors":
        check_safetensors(weights[0])
    args.base_model_name_or_path = args.base_model_name_or_path or config.get("base_model_name_or_path")
    if not args.base_model_name_or_path:
        raise UsageError(f"{flag}: adapter_config.json names no base model; pass --base_model_name_or_path")
    check_model_source(args.base_model_name_or_path, "--base_model_name_or_path")
    if args.tokenizer_name_or_path:
        check_model_source(args.tokenizer_name_or_path, "--tokenizer_name_or_path", need="")
    output_dir = Path(args.output_dir or adapter_dir / "lora_merged")
    adapter, out = adapter_dir.resolve(), output_dir.resolve()
    sources = {"--lora_model_name_or_path": adapter_dir}
    if out != adapter and out.is_relative_to(adapter):
        # A new subfolder of the run (the default lora_merged, the grid's merged) is fine; the run's files are not.
        top = adapter / out.relative_to(adapter).parts[0]
        if top.exists() and (not top.is_dir() or any((top / name).exists() for name in
                                                     ("adapter_config.json", "trainer_state.json"))):
            raise UsageError(f"--output_dir {output_dir}: would overwrite {top} of the adapter folder; "
                             "choose a new subfolder or a folder outside it")
        sources = {}
    check_output_dir(output_dir, "--output_dir", sources, args.overwrite)
    return output_dir


def load_tokenizer(args):
    from transformers import AutoTokenizer

    adapter_dir = Path(args.lora_model_name_or_path)
    has_own = (adapter_dir / "tokenizer_config.json").is_file()
    source = args.tokenizer_name_or_path or (adapter_dir if has_own else args.base_model_name_or_path)
    return AutoTokenizer.from_pretrained(source)


def merge(args) -> Path:
    output_dir = check_inputs(args)
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from open_instruct.peft_methods import register_all

    register_all()  # PEFT must know PROLORA / TIED_LORA before an adapter folder of ours is read
    adapter_config = PeftConfig.from_pretrained(args.lora_model_name_or_path)
    tokenizer = load_tokenizer(args)

    logger.info(f"loading base {args.base_model_name_or_path}{' (4-bit, dequantised)' if args.qlora else ''}")
    if args.qlora:
        model = load_dequantized_base(args.base_model_name_or_path)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.base_model_name_or_path)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        logger.info(f"resizing embeddings {model.get_input_embeddings().weight.shape[0]} → {len(tokenizer)}")
        model.resize_token_embeddings(len(tokenizer))

    logger.info(f"merging {adapter_config.peft_type} adapter {args.lora_model_name_or_path}")
    try:
        model = PeftModel.from_pretrained(model, args.lora_model_name_or_path).merge_and_unload()
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        raise UsageError(f"--lora_model_name_or_path {args.lora_model_name_or_path}: the adapter does not fit "
                         f"--base_model_name_or_path {args.base_model_name_or_path} (tensor shapes differ; "
                         "was it trained on another base model?)") from None
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        if args.save_tokenizer:
            tokenizer.save_pretrained(tmp)
    logger.info(f"saved merged model to {output_dir}")
    return output_dir


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return merge(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
