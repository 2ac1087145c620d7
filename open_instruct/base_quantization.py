"""What a QLoRA run records about its base model, so that base + adapter is evaluated on the same weights.

An adapter trained with ``--use_qlora`` learned ΔW against the NF4-quantised base. ``merge_lora --qlora`` therefore
merges it into the *dequantised* NF4 weights, not the original ones; evaluating base + adapter directly
(``--adapter_name_or_path``) must do the same, or its numbers differ from the merged checkpoint's. finetune writes
:func:`record` under :data:`KEY` in the run's ``all_results.json`` (None without QLoRA); the evals read it back with
:func:`read` and load the base through ``merge_lora.load_dequantized_base``, the one QLoRA recipe.
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
