"""The files finetune's flags name, checked before the model, the tokenizer or any output is touched.

`check_inputs` reads the model's config.json (adapter targets, PRoLoRA's m and n against the projection sizes),
the data files (read and validated in full, once per process), the checkpoint to resume from and the output
folder. A problem raises `UsageError`: one ``error:`` line, exit status 2, and an earlier run in ``--output_dir``
left as it was.
"""

from __future__ import annotations

import functools
from pathlib import Path

from open_instruct.cli import UsageError, check_model_source, check_readable_file, check_writable_dir, read_json_file
from open_instruct.peft_methods import build_peft_config
from open_instruct.training.checkpoints import (
    CHECKPOINT_PATTERN,
    COMPLETED_MARKER,
    FOREIGN_ENTRIES,
    resolve_resume,
)


@functools.lru_cache(maxsize=4)
def _read_validated(path: str) -> tuple[dict, ...]:
    from open_instruct.data.validate import iter_validated_jsonl

    check_readable_file(path, "data file")
    records = tuple(iter_validated_jsonl(path))
    if not records:
        raise UsageError(f"{path}: no records (the file is empty)")
    return records


def read_and_validate_records(path: str) -> list[dict]:
    """Every record of a jsonl file, each validated; one line naming ``path:line`` on the first bad one.

    Reads (and validates) a file once per process however often it is asked for.
    """
    return list(_read_validated(str(path)))


def check_adapter_geometry(args, config_dir: Path) -> None:
    """The adapter's target modules, and PRoLoRA's m and n, against the model's layer shapes.

    The model is built from its config.json on the meta device: no weight is read or allocated.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from prolora.params import target_linear_dims

    config_file = config_dir / "config.json"
    read_json_file(config_file)  # a missing or malformed file: one line naming it
    try:
        config = AutoConfig.from_pretrained(config_dir)
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{config_file}: not a causal-LM config transformers can build ({first})") from None
    targets = [] if args.lora_target_modules == ["all-linear"] else args.lora_target_modules
    names = [name for name, _ in skeleton.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise UsageError(f"--lora_target_modules {target}: no such module in {args.model_name_or_path}")
    dims = target_linear_dims(skeleton, build_peft_config(args))
    if not dims:
        raise UsageError(f"--lora_target_modules {' '.join(args.lora_target_modules)}: no linear layer of "
                         f"{args.model_name_or_path} matches")
    if args.peft_method != "prolora":
        return
    for name, (d_in, d_out) in dims.items():
        if args.reduce_lora_A_x > d_in:
            raise UsageError(f"--reduce_lora_A_x {args.reduce_lora_A_x} is larger than the input size {d_in} of "
                             f"{name} in {args.model_name_or_path}")
        if args.reduce_lora_B_x > d_out:
            raise UsageError(f"--reduce_lora_B_x {args.reduce_lora_B_x} is larger than the output size {d_out} of "
                             f"{name} in {args.model_name_or_path}")


def looks_like_run(folder: Path) -> bool:
    """A folder holding a (finished, unfinished or grid-prepared) fine-tuning run of this script."""
    names = {child.name for child in folder.iterdir()}
    return bool(names & {COMPLETED_MARKER, "all_results.json", "adapter_config.json", *FOREIGN_ENTRIES}) or any(
        CHECKPOINT_PATTERN.match(name) or name.startswith(".step_") for name in names)


def check_inputs(args) -> Path | None:
    """Model config, data, resume target and output folder, all before anything heavy; returns the checkpoint."""
    model_dir = check_model_source(args.model_name_or_path, "--model_name_or_path")
    if args.tokenizer_name:
        check_model_source(args.tokenizer_name, "--tokenizer_name", need="")
    config_dir = check_model_source(args.config_name, "--config_name") if args.config_name else model_dir
    if config_dir is not None and not args.use_lora:
        read_json_file(config_dir / "config.json")  # a missing or malformed file: one line naming it
    if config_dir is not None and args.use_lora:
        check_adapter_geometry(args, config_dir)

    output_dir = Path(args.output_dir)
    check_writable_dir(output_dir, "--output_dir")
    out = output_dir.resolve()
    protected = {"--model_name_or_path": model_dir, "--train_file": args.train_file, "--eval_file": args.eval_file}
    for flag, path in protected.items():
        if path is not None and (Path(path).resolve() == out or Path(path).resolve().is_relative_to(out)):
            raise UsageError(f"--output_dir {args.output_dir}: holds {flag} {path}, which a new run would replace")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not looks_like_run(output_dir):
        raise UsageError(f"--output_dir {args.output_dir}: folder holds files that are not a fine-tuning run; "
                         "choose a new or empty folder")

    if args.dataset_name:  # resolves the dataset (not its data), so a wrong or unreachable name fails now
        import datasets

        try:
            datasets.load_dataset_builder(args.dataset_name, args.dataset_config_name, token=args.token)
        except Exception as err:  # noqa: BLE001 - datasets raises many types; each becomes this one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--dataset_name {args.dataset_name}: {first}") from None
    for flag in ("train_file", "eval_file"):
        if getattr(args, flag):
            check_readable_file(getattr(args, flag), f"--{flag}")
            records = read_and_validate_records(getattr(args, flag))
            if flag == "train_file" and args.eval_split_size >= len(records):
                raise UsageError(f"--eval_split_size {args.eval_split_size} leaves no training data "
                                 f"({args.train_file} has {len(records)} records)")
    return resolve_resume(args, output_dir)

