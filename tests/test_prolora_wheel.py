"""The `prolora` wheel and sdist: `python -m build` makes both, `twine check --strict` passes them (metadata and the
README as the package page), and the wheel installs into the clean venv (torch, peft, safetensors only; see
tests/helpers/clean_venv.py) and imports there, with its version, licence and licence file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest
import tomllib
from helpers import clean_venv

pytestmark = pytest.mark.slow

PROJECT = clean_venv.REPO / "prolora"

SCRIPT = textwrap.dedent("""
    import importlib.metadata, importlib.util, sys
    import prolora
    from prolora import MosConfig, ProLoraConfig, count_adapter_params, export_as_lora, export_mos_as_lora

    assert prolora.__file__.startswith(sys.prefix), prolora.__file__
    assert importlib.util.find_spec("open_instruct") is None
    ProLoraConfig(r=4, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2, target_modules=["q_proj"])
    MosConfig(r=4, mos_r=2, target_modules=["q_proj"])
    meta = importlib.metadata.metadata("prolora")
    files = [str(f) for f in importlib.metadata.files("prolora")]
    print("version", importlib.metadata.version("prolora"))
    print("license", meta["License-Expression"])
    print("license-file", meta["License-File"], any(f.endswith("licenses/LICENSE") for f in files))
""")


def _run(*cmd: str, cwd=None) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_wheel_and_sdist_build_check_install_and_import(tmp_path):
    version = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    dist, source = tmp_path / "dist", tmp_path / "prolora"
    # a fresh copy, so a stale prolora/build/ or egg-info of the checkout cannot leak old files into the wheel (the
    # CITATION.cff link is followed, as the sdist does)
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # --no-isolation: build with the setuptools of this venv (offline-safe; pyproject's build-system floor applies)
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source))
    wheel, sdist = dist / f"prolora-{version}-py3-none-any.whl", dist / f"prolora-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    assert "PASSED" in _run(sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist))

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert f"prolora-{version}.dist-info/licenses/LICENSE" in names
    assert "prolora/mos/__init__.py" in names and "prolora/__init__.py" in names
    assert not [n for n in names if n.split("/")[0] in ("open_instruct", "eval", "tests")]
    with tarfile.open(sdist) as tf:
        members = {m.name.removeprefix(f"prolora-{version}/"): m for m in tf.getmembers()}
        citation = tf.extractfile(members["CITATION.cff"]).read().decode()
        licence = tf.extractfile(members["LICENSE"]).read().decode()
    assert citation == (clean_venv.REPO / "CITATION.cff").read_text()  # the root file itself, not a stale copy
    assert "2402.16902" in citation and "2410.00938" in citation
    assert "Apache License" in licence and "Version 2.0" in licence

    with clean_venv.locked():  # the standalone test reinstalls the source tree over this under the same lock
        clean_venv.pip("install", "--no-deps", "--force-reinstall", str(wheel))
        clean_venv.pip("check")
        proc = clean_venv.run_script(SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert f"version {version}" in lines
    assert "license Apache-2.0" in lines
    assert "license-file LICENSE True" in lines
