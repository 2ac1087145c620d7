"""A cached venv with only the `prolora` library's dependencies (torch, peft, safetensors), for install tests.

It lives in .venv-prolora-check/ (git-ignored; built once, ~4 minutes on 2 CPU cores, then reused). The tests that
install into it (tests/test_prolora_standalone.py: the source tree; tests/test_prolora_wheel.py: the built wheel)
each reinstall their own copy of prolora with --force-reinstall while holding `locked()`, so they never see each
other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-prolora-check"
PYTHON = VENV / "bin" / "python"


def _declared() -> list[str]:
    """prolora's own dependency specs (prolora/pyproject.toml), torch pinned to the wheel this project tests with:
    what `pip install prolora` resolves for a user. Unpinned names would let a new release that prolora does not
    declare support for (peft 0.22 against "peft>=0.21,<0.22") into the venv, and `pip check` would rightly fail."""
    import tomllib

    specs = tomllib.loads((REPO / "prolora" / "pyproject.toml").read_text())["project"]["dependencies"]
    return ["torch==2.13.0" if spec.replace(" ", "").startswith("torch") else spec for spec in specs]


REQUIREMENTS = _declared()  # what a user of the library installs besides it
MARKER = VENV / "requirements.done"


def pip(*args: str) -> None:
    proc = subprocess.run([str(PYTHON), "-m", "pip", "-q", *args], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def run_script(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `script` with the venv's python outside the checkout (no PYTHONPATH), so only installed code is seen."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(PYTHON), "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def locked():
    """Hold the venv for this process: create it with the library's dependencies once, then yield."""
    VENV.parent.mkdir(exist_ok=True)
    with open(REPO / ".venv-prolora-check.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (MARKER.is_file() and MARKER.read_text().split() == REQUIREMENTS):
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
            pip("install", *REQUIREMENTS)
            MARKER.write_text("\n".join(REQUIREMENTS) + "\n")
        yield
