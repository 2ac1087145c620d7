"""The `prolora` distribution installs and works on its own: a clean venv with torch, peft and safetensors only.

The venv is the cached one of tests/helpers/clean_venv.py; every run reinstalls ./prolora from the working tree (a
regular, non-editable install, so packaging mistakes show), runs `pip check` against its declared dependencies, and
a script outside the checkout that must not see the harness. PEFT itself depends on transformers and accelerate, so
those come with it; nothing of open_instruct or eval does. (tests/test_prolora_wheel.py does the same with the built
wheel.)
"""

from __future__ import annotations

import textwrap

import pytest
from helpers import clean_venv

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


def test_prolora_installs_and_runs_without_the_harness(tmp_path):
    with clean_venv.locked():
        clean_venv.pip("install", "--no-deps", "--no-build-isolation", "--force-reinstall",
                       str(clean_venv.REPO / "prolora"))
        clean_venv.pip("check")  # the versions there satisfy prolora's declared dependencies
        proc = clean_venv.run_script(SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "transformers imported by peft:" in proc.stdout
