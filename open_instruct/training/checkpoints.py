"""Checkpoints and the final output folder of a fine-tuning run: manifests, resume, the atomic swap.

A checkpoint (``--checkpointing_steps``) is a full accelerate state (model, optimizer, scheduler, RNG) in
``output_dir/step_N`` plus ``trainer_state.json`` (step, summed loss, run time, the run's id and the settings that
decide the state's shapes) and, written last, ``manifest.json`` (size and sha256 of every file). It is built under a
temporary name and renamed when complete, so a ``step_N`` folder exists only whole.

``--resume_from_checkpoint auto`` takes the newest checkpoint whose files match its manifest (skipping, and naming
in the log, a corrupted one); a checkpoint written with other adapter or batch settings is refused.

The final output replaces ``output_dir`` as a whole in one rename (`save_final`): files of an earlier run there
never survive next to the new ones, and a kill leaves either the earlier run or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from open_instruct.cli import UsageError
from open_instruct.io_utils import atomic_dir, write_json, write_text

logger = logging.getLogger(__name__)  # the functions given an accelerator log on its main process only

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"
COMPLETED_MARKER = "completed"
MANIFEST = "manifest.json"
# Settings a checkpoint must share with the run that resumes it (they decide the state's shapes and the batches).
RESUME_SETTINGS = ("use_lora", "use_qlora", "peft_method", "lora_rank", "lora_target_modules", "unshared_r",
                   "reduce_lora_A_x", "reduce_lora_B_x", "per_device_train_batch_size", "gradient_accumulation_steps")
# Entries of a run folder written by other tools around a run (open_instruct.paper.grid); a new run keeps them.
FOREIGN_ENTRIES = ("run_config.json", ".grid", "logs")


def new_state(args) -> dict:
    """What a checkpoint carries besides the accelerate state; ``run_id`` names the checkpoints of this run (and
    of the runs it resumes)."""
    return {"global_step": 0, "loss_sum": 0.0, "train_runtime": 0.0, "run_id": uuid.uuid4().hex,
            "settings": run_settings(args)}


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders (a `step_N` folder exists only once fully written), oldest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def write_manifest(folder: Path) -> None:
    """``manifest.json``: size and sha256 of every file of a checkpoint, written last."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            with open(path, "rb") as f:
                files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size,
                                                              "sha256": hashlib.file_digest(f, "sha256").hexdigest()}
    write_json(folder / MANIFEST, {"files": files})


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (missing, truncated or altered files), or None when it is whole."""
    if not folder.is_dir():
        return "no such folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        files = manifest["files"]
        int(state["global_step"])
    except FileNotFoundError as err:
        return f"no {Path(err.filename).name}"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} or {TRAINER_STATE} ({type(err).__name__}: {err})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}"
        with open(path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != expected["sha256"]:
                return f"{name} does not match its sha256 in the manifest"
    return None


def checkpoint_state(folder: Path) -> dict:
    return json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))


def run_settings(args) -> dict:
    return {name: getattr(args, name) for name in RESUME_SETTINGS}


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int | None) -> None:
    """accelerate.save_state into a temporary folder (all ranks), renamed to step_N by the main process.

    The main process adds trainer_state.json and, last, the manifest. `keep` prunes this run's older checkpoints.
    """
    from accelerate.utils import broadcast_object_list

    final = output_dir / f"step_{state['global_step']}"
    with atomic_dir(final) if accelerator.is_main_process else contextlib.nullcontext() as tmp:
        tmp = broadcast_object_list([str(tmp) if tmp else None])[0]
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(Path(tmp) / TRAINER_STATE, state)
            write_manifest(Path(tmp))
    if accelerator.is_main_process and keep:
        ours = [path for _, path in list_checkpoints(output_dir) if same_run(path, state["run_id"])]
        for old in ours[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        logger.info(f"saved checkpoint {final}")


def same_run(folder: Path, run_id: str) -> bool:
    try:
        return checkpoint_state(folder).get("run_id") == run_id
    except (OSError, ValueError):
        return False


def resolve_resume(args, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: an explicit `step_N` folder, or with 'auto' the newest whole one.

    'auto' skips (and reports) checkpoints whose files do not match their manifest. A checkpoint written with other
    adapter or batch settings is refused rather than loaded into a model it does not fit.
    """
    flag = f"--resume_from_checkpoint {args.resume_from_checkpoint}"
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "auto":
        checkpoint = None
        for _, candidate in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(candidate)
            if problem is None:
                checkpoint = candidate
                break
            logger.warning(f"skipping corrupted checkpoint {candidate}: {problem}")
        if checkpoint is None:
            return None
    else:
        checkpoint = Path(args.resume_from_checkpoint)
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise UsageError(f"{flag}: not a whole checkpoint ({problem})")
    state = checkpoint_state(checkpoint)
    if args.max_train_steps is not None and state["global_step"] >= args.max_train_steps:
        raise UsageError(f"{flag}: {checkpoint} is already at step {state['global_step']}, not before "
                         f"--max_train_steps {args.max_train_steps}")
    saved = state.get("settings", {})
    for name, value in run_settings(args).items():
        if name in saved and saved[name] != value:
            raise UsageError(f"{flag}: {checkpoint} was written with --{name} {saved[name]}, this run has {value}; "
                             "resume with the same settings or use another --output_dir")
    return checkpoint



def save_final(accelerator, model, tokenizer, output_dir: Path, results: dict, run_id: str,
               keep: tuple[str, ...] = FOREIGN_ENTRIES) -> None:
    """Replace `output_dir` as a whole by the finished run: adapter (or full model), tokenizer, all_results.json,
    the `completed` marker, this run's checkpoints and the `keep` entries of other tools.

    Every rank takes part in `get_state_dict` (under ZeRO-3 it gathers the shards); only the main process writes.
    The new folder is built next to `output_dir` (checkpoints and kept entries are hard links, not copies) and
    swapped in with one rename, so a reader (or a kill at any moment) sees the previous run or this one, whole.
    """
    from peft import PeftModel

    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    # An added <pad> embedding row is never trained: keep embeddings out of the adapter (merge re-adds the row).
    extra = {"save_embedding_layers": False} if isinstance(unwrapped, PeftModel) else {}
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_dir(output_dir) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, **extra)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "all_results.json", results)
            write_text(tmp / COMPLETED_MARKER, "")
            for child in output_dir.iterdir():
                if child.name in keep or (CHECKPOINT_PATTERN.match(child.name) and same_run(child, run_id)):
                    link_tree(child, tmp / child.name)
        logger.info(f"saved {output_dir}: train_loss {results['train_loss']:.4f}, eval_loss {results['eval_loss']}")
    accelerator.wait_for_everyone()


def link_tree(source: Path, target: Path) -> None:
    """Hard-link a file or folder tree (copy where the filesystem cannot link)."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link, symlinks=True)
    else:
        link(source, target)


def clean_leftovers(output_dir: Path) -> None:
    """Remove what a killed run left half-written: temporary checkpoints and final folders."""
    staged = re.compile(rf"\.{re.escape(output_dir.name)}\.[a-z0-9_]{{8}}\.tmp")  # atomic_dir's mkdtemp names
    for leftover in [*output_dir.glob(".step_*.tmp"), output_dir.with_name(f".{output_dir.name}.old"),
                     *(p for p in output_dir.parent.iterdir() if staged.fullmatch(p.name))]:
        shutil.rmtree(leftover, ignore_errors=True)




def load_checkpoint(accelerator, checkpoint: Path, state: dict) -> dict:
    """Restore model, optimizer, scheduler and RNG from ``checkpoint``; returns ``state`` updated from it."""
    accelerator.load_state(str(checkpoint))
    state = {**state, **checkpoint_state(checkpoint)}
    if accelerator.is_main_process:
        logger.info(f"resumed from {checkpoint} at step {state['global_step']}")
    return state
