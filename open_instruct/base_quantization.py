"""What a QLoRA run records about its base model, so that base + adapter is evaluated on the same weights.

An adapter trained with ``--use_qlora`` learned ΔW against the NF4-quantised base. ``merge_lora --qlora`` therefore
merges it into the *dequantised* NF4 weights, not the original ones; evaluating base + adapter directly
(``--adapter_name_or_path``) must do the same, or its numbers differ from the merged checkpoint's. finetune writes
:func:`record` under :data:`KEY` in the run's ``all_results.json`` (None without QLoRA); the evals read it back with
:func:`read` and load the base through :func:`load_dequantized_base`, the one dequantisation recipe, which
``merge_lora --qlora`` uses too (so an eval never imports the training tools).
"""

from __future__ import annotations

import json
from pathlib import Path

KEY = "base_quantization"
RESULTS_FILE = "all_results.json"
_FIELDS = ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant")


def record() -> dict:
    """How a QLoRA base is quantised, from the one recipe (``peft_methods.qlora_quantization_config``)."""
    import torch

    from open_instruct.peft_methods import qlora_quantization_config

    config = qlora_quantization_config(torch.float32)  # the compute dtype is not part of the stored weights
    return {field: getattr(config, field) for field in _FIELDS}


def read(run_dir: str | Path) -> dict | None:
    """The recorded quantisation of the base an adapter folder was trained on (None: full precision or unknown)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get(KEY)
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


def load_dequantized_base(path: str):
    """The base as QLoRA training saw it (NF4 + double quant), returned as an ordinary model with those weights."""
    import bitsandbytes as bnb
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from open_instruct.peft_methods import qlora_compute_dtype, qlora_quantization_config

    on_gpu = torch.cuda.is_available()
    dtype = qlora_compute_dtype(on_gpu)
    quantized = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, device_map={"": 0 if on_gpu else "cpu"},
        quantization_config=qlora_quantization_config(dtype))
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
