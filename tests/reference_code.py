"""Locating and importing the upstream reference code the fidelity tests compare against.

The reference folder is ``<repo>/../shared/reference`` (CI keeps a copy of ``shared/`` beside the clone) or
``/work/shared/reference``; tests that need it are skipped, with the reason, where neither exists.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = (REPO.parent / "shared" / "reference", Path("/work/shared/reference"))
REFERENCE = next((p for p in _CANDIDATES if p.is_dir()), None)
OPEN_INSTRUCT = REFERENCE / "open-instruct-d61037f5" if REFERENCE else None
PROLORA = REFERENCE / "PRoLoRA-2e2b1ee" if REFERENCE else None

requires_reference = pytest.mark.skipif(
    REFERENCE is None, reason="upstream reference code not found at <repo>/../shared/reference")


def load_module(path: Path, name: str, aliases: dict[str, Path] | None = None) -> ModuleType:
    """Import the file ``path`` as module ``name``; ``aliases`` are modules it imports by a bare name
    (``from instruction_encode_templates import ...``), loaded first and registered under that name."""
    for alias, alias_path in (aliases or {}).items():
        if alias not in sys.modules:
            sys.modules[alias] = load_module(alias_path, alias)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
