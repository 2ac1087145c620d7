"""The `prolora` distribution installs and works on its own: a clean venv with torch, peft and safetensors only.

The venv is cached in .venv-prolora-check/ (git-ignored; built once, ~4 minutes on 2 CPU cores, then reused); every
run reinstalls ./prolora from the working tree (a regular, non-editable install, so packaging mistakes show), runs
`pip check` against its declared dependencies, and a script outside the checkout that must not see the harness.
PEFT itself depends on transformers and accelerate, so those come with it; nothing of open_instruct or eval does.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-prolora-check"
REQUIREMENTS = ["torch==2.13.0", "peft", "safetensors"]  # what a user of the library installs besides it
MARKER = VENV / "requirements.done"

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import importlib.util, sys, tempfile
    import torch
    from torch import nn

    import prolora
    from prolora import ProLoraConfig
    from peft import PeftModel, get_peft_model

    for name in ("open_instruct", "eval"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable in the clean venv"
    assert prolora.__file__.startswith(sys.prefix), prolora.__file__  # the installed copy, not the checkout

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(33, 70), nn.Linear(70, 33)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    def net():
        torch.manual_seed(0)
        return Net()

    config = ProLoraConfig(r=4, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=3, target_modules=["up", "down"],
                           init_weights=False)
    x = torch.randn(5, 33)
    base_out = net()(x)
    model = get_peft_model(net(), config)
    out = model(x)
    assert not torch.allclose(out, base_out)  # init_weights=False: not an identity adapter
    assert model.get_nb_trainable_parameters()[0] == prolora.count_adapter_params(net(), config)
    out.sum().backward()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = PeftModel.from_pretrained(net(), folder)
        torch.testing.assert_close(loaded(x), out)
        torch.testing.assert_close(loaded.merge_and_unload()(x), out, rtol=1e-5, atol=1e-5)
    harness = sorted(m for m in sys.modules if m.split(".")[0] in ("open_instruct", "eval"))
    assert not harness, harness
    print("transformers imported by peft:", "transformers" in sys.modules)
""")


def _pip(*args: str) -> None:
    proc = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "-q", *args], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _ensure_venv() -> None:
    """Create the cached venv with the library's dependencies once (a lock keeps parallel runs apart)."""
    VENV.parent.mkdir(exist_ok=True)
    with open(REPO / ".venv-prolora-check.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if MARKER.is_file() and MARKER.read_text().split() == REQUIREMENTS:
            return
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300)
        _pip("install", *REQUIREMENTS)
        MARKER.write_text("\n".join(REQUIREMENTS) + "\n")


def test_prolora_installs_and_runs_without_the_harness(tmp_path):
    _ensure_venv()
    _pip("install", "--no-deps", "--no-build-isolation", "--force-reinstall", str(REPO / "prolora"))
    _pip("check")  # the versions there satisfy prolora's declared dependencies
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(VENV / "bin" / "python"), "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "transformers imported by peft:" in proc.stdout
