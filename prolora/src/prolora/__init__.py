"""PRoLoRA (Partial Rotation Empowers More Parameter-Efficient LoRA) as an out-of-tree PEFT method.

Importing this package registers the PEFT type ``PROLORA`` so that ``peft.get_peft_model``,
``PeftModel.from_pretrained``, ``load_adapter``, merging and unloading work with `ProLoraConfig`;
likewise ``MOS`` for `MosConfig` (Mixture of Shards, the authors' cross-layer follow-up, in `prolora.mos`).
The math lives in `prolora.rebuild`; this package depends on torch, peft and safetensors only.

The public names are loaded on first use (PEP 562), each from its own submodule. Registering the two types needs
peft, so ``import prolora`` still imports peft (and torch) and costs what importing peft costs. One exception:
``python -m prolora.export ...`` imports this package before it runs the command, and there the registration is
left to the command, which parses and checks its flags first, so a mistyped flag is reported at once.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prolora.config import ProLoraConfig, ProLoraPeftType
    from prolora.export import export_as_lora
    from prolora.layer import Linear, ProLoraLayer
    from prolora.model import ProLoraModel
    from prolora.mos import MosConfig, MosModel, MosPeftType, export_mos_as_lora
    from prolora.params import count_adapter_params, lora_layer_params, prolora_layer_params
    from prolora.peft_compat import register_peft_type  # noqa: F401  (reachable as before, not in __all__)
    from prolora.rebuild import rebuild_A, rebuild_B

_SUBMODULE_OF = {  # public name → the module that defines it
    "Linear": "prolora.layer",
    "MosConfig": "prolora.mos",
    "MosModel": "prolora.mos",
    "MosPeftType": "prolora.mos",
    "ProLoraConfig": "prolora.config",
    "ProLoraLayer": "prolora.layer",
    "ProLoraModel": "prolora.model",
    "ProLoraPeftType": "prolora.config",
    "count_adapter_params": "prolora.params",
    "export_as_lora": "prolora.export",
    "export_mos_as_lora": "prolora.mos",
    "lora_layer_params": "prolora.params",
    "prolora_layer_params": "prolora.params",
    "rebuild_A": "prolora.rebuild",
    "rebuild_B": "prolora.rebuild",
    "register_peft_type": "prolora.peft_compat",  # not in __all__; reachable here as it always was
}
_SUBMODULES = ("config", "dropout", "export", "layer", "mixed_batch", "model", "mos", "params", "peft_compat",
               "rebuild")
# Commands of this package run as `python -m <name>`: each registers the PEFT types itself once its flags are good.
_COMMANDS = ("prolora.export",)

__all__ = [
    "Linear",
    "MosConfig",
    "MosModel",
    "MosPeftType",
    "ProLoraConfig",
    "ProLoraLayer",
    "ProLoraModel",
    "ProLoraPeftType",
    "count_adapter_params",
    "export_as_lora",
    "export_mos_as_lora",
    "lora_layer_params",
    "prolora_layer_params",
    "rebuild_A",
    "rebuild_B",
]


def __getattr__(name: str):
    if name in _SUBMODULE_OF:
        value = getattr(importlib.import_module(_SUBMODULE_OF[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:  # `prolora.params` after a plain `import prolora`, as with an eager package
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULE_OF) | set(_SUBMODULES))


def _register_peft_types() -> None:
    """Make PEFT know ``PROLORA`` and ``MOS`` (idempotent; imports peft)."""
    from prolora.config import ProLoraConfig, ProLoraPeftType
    from prolora.model import ProLoraModel
    from prolora.mos import MosConfig, MosModel, MosPeftType
    from prolora.peft_compat import register_peft_type  # noqa: F401  (reachable as before, not in __all__)

    register_peft_type(ProLoraPeftType.PROLORA, ProLoraConfig, ProLoraModel)
    register_peft_type(MosPeftType.MOS, MosConfig, MosModel)


def _imported_to_run_a_command() -> bool:
    """True while ``python -m prolora.export ...`` imports this package before running the command.

    Python sets ``sys.argv[0]`` to ``"-m"`` while it locates the module of ``-m`` (which imports the module's
    packages); ``sys.orig_argv`` still holds the interpreter's command line, the module name (``prolora.export`` or
    ``-mprolora.export``) just before the command's own arguments.
    """
    if sys.argv[:1] != ["-m"] or len(sys.orig_argv) <= len(sys.argv):
        return False
    return sys.orig_argv[-len(sys.argv)].removeprefix("-m") in _COMMANDS


if not _imported_to_run_a_command():
    _register_peft_types()
