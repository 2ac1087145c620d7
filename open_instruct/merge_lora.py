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
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

import prolora  # noqa: F401  (registers the PROLORA PEFT type so its adapters load)
import open_instruct.tied_lora  # noqa: F401  (registers the TIED_LORA PEFT type)
from open_instruct.io_utils import atomic_dir

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Merge a LoRA/PRoLoRA adapter into its base model.")
    p.add_argument("--lora_model_name_or_path", required=True, help="folder of the trained adapter")
    p.add_argument("--base_model_name_or_path", help="default: the base recorded in adapter_config.json")
    p.add_argument("--tokenizer_name_or_path", help="default: the adapter folder if it has a tokenizer, else the base")
    p.add_argument("--output_dir", help="default: <lora_model_name_or_path>/lora_merged")
    p.add_argument("--qlora", action="store_true", help="merge into the dequantised 4-bit NF4 base (QLoRA runs)")
    p.add_argument("--save_tokenizer", action="store_true", help="also save the tokenizer with the merged model")
    return p.parse_args(argv)


def load_tokenizer(args):
    adapter_dir = Path(args.lora_model_name_or_path)
    has_own = (adapter_dir / "tokenizer_config.json").is_file()
    source = args.tokenizer_name_or_path or (adapter_dir if has_own else args.base_model_name_or_path)
    return AutoTokenizer.from_pretrained(source)


def load_dequantized_base(path: str):
    """The base as QLoRA training saw it (NF4 + double quant), returned as an ordinary model with those weights."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    quantized = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, device_map={"": 0 if on_gpu else "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype))
    with no_init_weights():  # every weight is overwritten below; skip the random initialisation
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    with torch.no_grad():
        for name, target in tqdm(model.state_dict().items(), desc="dequantize"):
            module_name, _, leaf = name.rpartition(".")
            tensor = getattr(quantized.get_submodule(module_name), leaf)
            if isinstance(tensor, bnb.nn.Params4bit):
                tensor = bnb.functional.dequantize_4bit(tensor.data, tensor.quant_state)
            target.copy_(tensor.to("cpu", dtype))
    del quantized
    return model


def merge(args) -> Path:
    adapter_config = PeftConfig.from_pretrained(args.lora_model_name_or_path)
    args.base_model_name_or_path = args.base_model_name_or_path or adapter_config.base_model_name_or_path
    if not args.base_model_name_or_path:
        raise ValueError(f"{args.lora_model_name_or_path}: adapter_config.json names no base model; "
                         "pass --base_model_name_or_path")
    output_dir = Path(args.output_dir or Path(args.lora_model_name_or_path) / "lora_merged")
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
    model = PeftModel.from_pretrained(model, args.lora_model_name_or_path).merge_and_unload()
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
    main()
