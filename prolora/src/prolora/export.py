"""Export a PRoLoRA adapter as an exactly equivalent vanilla PEFT LoRA adapter.

PRoLoRA's ``A`` and ``B`` are ordinary rank-r LoRA factors once rebuilt, so writing the rebuilt tensors as
``lora_A.weight`` (r, d_in) / ``lora_B.weight`` (d_out, r) with the same ``r`` and ``lora_alpha`` gives a standard
``peft_type: LORA`` adapter with identical outputs. That is what vLLM, TGI/LoRAX and plain ``peft`` load, so it is
the bridge to serving many adapters. (PEFT's own ``convert_to_lora`` goes through an SVD; this is exact.)

CLI::

    python -m prolora.export --base_model_name_or_path B --adapter_dir D --output_dir O
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

# torch, peft and the PRoLoRA layer are imported where they are used, so that the command below parses its flags
# before any of them loads (`python -m prolora.export --bogus` answers at once).
if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."


@contextlib.contextmanager
def _atomic_output_dir(path: Path):
    """Build the adapter in a temporary sibling folder and rename it into place: never a half-written adapter.

    An existing folder at ``path`` is moved aside first and deleted only once the new one is in place. Files get
    the umask's usual permissions (mkdtemp makes the folder 0700 and safetensors writes 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        for child in tmp.iterdir():
            os.chmod(child, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _target_modules(peft_model: nn.Module, adapted: list[str]) -> list[str] | str:
    """Leaf names (e.g. ``["q_proj", "v_proj"]``) when they select exactly the adapted modules, else an exact regex."""
    from torch import nn

    from prolora.layer import ProLoraLayer

    leaf_names = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    base = peft_model.get_base_model()
    candidates = {
        name
        for name, module in base.named_modules()
        if name.rsplit(".", 1)[-1] in leaf_names and (isinstance(module, (nn.Linear, ProLoraLayer)))
    }
    if candidates == set(adapted):
        return leaf_names
    return "^(" + "|".join(re.escape(name) for name in sorted(adapted)) + ")$"


def export_as_lora(peft_model, output_dir: str | Path, adapter_name: str = "default",
                   dtype: torch.dtype | None = None) -> Path:
    """Write ``adapter_name`` of a PRoLoRA ``PeftModel`` to ``output_dir`` as a vanilla LoRA adapter.

    The folder gets ``adapter_config.json`` (``peft_type: LORA``, same ``r``/``lora_alpha``/dropout) and
    ``adapter_model.safetensors`` with ``<module>.lora_A.weight`` (r, d_in) and ``<module>.lora_B.weight`` (d_out, r);
    ``modules_to_save`` weights are carried over unchanged. Written atomically. ``dtype`` casts the factors
    (default: keep the adapter's dtype). Returns the output path.
    """
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from prolora.layer import ProLoraLayer

    config = peft_model.peft_config[adapter_name]
    if str(getattr(config.peft_type, "value", config.peft_type)) != "PROLORA":
        raise ValueError(f"adapter {adapter_name!r} is a {config.peft_type} adapter, not PRoLoRA")

    weights: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    for name, module in peft_model.named_modules():
        if isinstance(module, ProLoraLayer) and module.has_adapter(adapter_name):
            with torch.no_grad():
                A, B = module.rebuild(adapter_name)
            if dtype is not None:
                A, B = A.to(dtype), B.to(dtype)
            weights[f"{name}.lora_A.weight"] = A.detach().cpu().contiguous()
            weights[f"{name}.lora_B.weight"] = B.detach().cpu().contiguous()
            adapted.append(name.removeprefix(_PEFT_PREFIX))
    if not adapted:
        raise ValueError(f"no PRoLoRA layer holds adapter {adapter_name!r}")
    # Extra trained modules (modules_to_save) are method-agnostic: copy them as they are.
    for key, tensor in get_peft_model_state_dict(peft_model, adapter_name=adapter_name).items():
        if ".prolora_" not in key:
            weights[key] = tensor.detach().cpu().contiguous()

    lora_config = LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_target_modules(peft_model, adapted),
        bias="none",
        task_type=config.task_type,
        modules_to_save=config.modules_to_save,
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
        inference_mode=True,
    )
    output_dir = Path(output_dir)
    with _atomic_output_dir(output_dir) as tmp:
        lora_config.save_pretrained(str(tmp))
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    logger.info("exported %d PRoLoRA layers of adapter %r as vanilla LoRA to %s", len(adapted), adapter_name,
                output_dir)
    return output_dir


class _UsageError(Exception):
    """Bad input to the CLI: reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _check_cli_inputs(args) -> None:
    """The adapter folder and the output folder, before any model is loaded."""
    adapter_dir = Path(args.adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise _UsageError(f"--adapter_dir {args.adapter_dir}: no such folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _UsageError(f"--adapter_dir {args.adapter_dir}: no adapter_config.json there") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _UsageError(f"{config_file}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "PROLORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise _UsageError(f"--adapter_dir {args.adapter_dir}: a {found} adapter, not PRoLoRA (nothing to export)")
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - safetensors' own error type for a corrupt file
            raise _UsageError(f"{weights}: corrupt safetensors file ({str(err).splitlines()[0]})") from None
    base = args.base_model_name_or_path
    if Path(base).exists() or base.startswith(("/", ".", "~")) or base.count("/") > 1:
        if not (Path(base).expanduser() / "config.json").is_file():
            raise _UsageError(f"--base_model_name_or_path {base}: no model folder (config.json) there")

    out, src = Path(args.output_dir).resolve(), adapter_dir.resolve()
    if out == src or src.is_relative_to(out) or out.is_relative_to(src):
        raise _UsageError(f"--output_dir {args.output_dir}: is, contains or lies inside --adapter_dir "
                          f"{args.adapter_dir}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--output_dir {args.output_dir}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise _UsageError(f"--output_dir {args.output_dir}: folder is not empty; pass --overwrite to replace it")
    parent = out if out.is_dir() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK) or not os.access(out.parent if out.parent.exists() else parent, os.W_OK):
        raise _UsageError(f"--output_dir {args.output_dir}: {parent} is not writable")


def main(argv: list[str] | None = None) -> None:
    # prolora is a library of its own and does not import the harness (open_instruct), so this CLI carries its
    # own few lines of the harness's convention (open_instruct.cli): bad input → exit status 2, one `error:` line.
    parser = _Parser(description="Export a PRoLoRA adapter as an equivalent vanilla PEFT LoRA adapter.")
    parser.add_argument("--base_model_name_or_path", required=True, help="base model the adapter was trained on")
    parser.add_argument("--adapter_dir", required=True, help="folder with the PRoLoRA adapter (adapter_config.json)")
    parser.add_argument("--output_dir", required=True, help="where to write the LoRA adapter (a new or empty folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --output_dir")
    parser.add_argument("--adapter_name", default="default")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the written LoRA factors")
    parser.add_argument("--token", default=None, help="hub token for gated base models (or set HF_TOKEN)")
    args = parser.parse_args(argv)
    try:
        _check_cli_inputs(args)
    except _UsageError as err:
        parser.exit(2, f"error: {err}\n")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import prolora

    prolora._register_peft_types()  # `python -m prolora.export` left it to this point (see prolora/__init__.py)

    base = AutoModelForCausalLM.from_pretrained(args.base_model_name_or_path, dtype=torch.float32, token=args.token)
    try:
        model = PeftModel.from_pretrained(base, args.adapter_dir, adapter_name=args.adapter_name)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        parser.exit(2, f"error: --adapter_dir {args.adapter_dir}: the adapter does not fit --base_model_name_or_path "
                       f"{args.base_model_name_or_path} (tensor shapes differ)\n")
    out = export_as_lora(model, args.output_dir, adapter_name=args.adapter_name, dtype=getattr(torch, args.dtype))
    print(out)


if __name__ == "__main__":
    main()
