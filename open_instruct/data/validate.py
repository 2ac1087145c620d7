"""Check instruction-tuning data files before training, and report where a record is wrong.

Two record formats are accepted, one JSON object per line (open-instruct's processed jsonl):

* ``{"messages": [{"role": ..., "content": ...}, ...], ...}`` — a non-empty list; roles are ``system``,
  ``user`` and ``assistant``; every content is a string. Other keys (``dataset``, ``id``) are free.
* ``{"prompt": str, "completion": str}`` — two strings.

That is what open-instruct's encoder accepts, and upstream's converters do write records it still trains on
although they look odd (an empty answer, a ShareGPT chat that starts with the assistant); finetune accepts them
too, so the paper's data trains as it did. ``strict=True`` (``--strict`` on the command line,
``reformat_datasets --skip_unusable``) also requires what a clean conversation has: an optional system message
first and only first, turns alternating user, assistant, ... and ending on an assistant turn, and some
non-whitespace text in every content.

A bad record raises :class:`DataValidationError` whose message starts with where it was found
(``"data.jsonl:17: message 2 has role 'bot' ..."``; message indices count from 0). ``finetune`` reads its
training file through :func:`iter_validated_jsonl`, so a broken line stops it before any model is loaded.

CLI::

    python -m open_instruct.validate_data FILE [FILE ...] [--stats --tokenizer PATH [--max_seq_length N]]

prints the errors of each file (up to 20 per file; an empty, unreadable or non-UTF-8 file is an error too,
and the other files are still checked; exit status 1 if any) and, with ``--stats``, counts of
records and turns and, given a tokenizer, percentiles of each record's token length in the
training encoding (tulu layout).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

from open_instruct.cli import ArgumentParser, UsageError, check_model_source
from open_instruct.io_utils import iter_jsonl

ROLES = ("system", "user", "assistant")
UNTRUNCATED = 1 << 30  # a max_seq_length that never truncates, to measure full lengths


class DataValidationError(UsageError, ValueError):
    """A record (or line) of a data file does not have the expected shape; the message says where."""


def _check_text(value, where: str, what: str, strict: bool) -> None:
    if not isinstance(value, str):
        raise DataValidationError(f"{where}: {what} should be a string, got {type(value).__name__}")
    if strict and not value.strip():
        raise DataValidationError(f"{where}: {what} is empty")


def _validate_messages(messages, where: str, strict: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataValidationError(f"{where}: 'messages' should be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataValidationError(f"{where}: message {i} should be an object, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise DataValidationError(f"{where}: message {i} has role {role!r} (expected system, user or assistant)")
        _check_text(message.get("content"), where, f"message {i} ({role}) content", strict)
    if not strict:
        return
    for i, message in enumerate(messages):
        if message["role"] == "system" and i != 0:
            raise DataValidationError(f"{where}: message {i} is a system message; only the first message may be one")
    # After the optional system message the turns go user, assistant, user, ... and end on an assistant turn.
    start = 1 if messages[0]["role"] == "system" else 0
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i]["role"] != expected:
            raise DataValidationError(
                f"{where}: message {i} has role '{messages[i]['role']}' but '{expected}' was expected "
                "(turns must alternate user/assistant, starting with user)")
    if messages[-1]["role"] != "assistant":
        raise DataValidationError(f"{where}: the last message should be an assistant turn, "
                                  f"got '{messages[-1]['role']}'")


def validate_record(record: dict, where: str, strict: bool = False) -> None:
    """Raise :class:`DataValidationError` (message prefixed by ``where``) unless ``record`` is a valid example.

    ``strict`` adds the clean-conversation rules of the module docstring to the ones finetune needs.
    """
    if not isinstance(record, dict):
        raise DataValidationError(f"{where}: a record should be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        _validate_messages(record["messages"], where, strict)
    elif "prompt" in record or "completion" in record:
        _check_text(record.get("prompt"), where, "'prompt'", strict)
        _check_text(record.get("completion"), where, "'completion'", strict)
    else:
        raise DataValidationError(f"{where}: record has neither 'messages' nor 'prompt'/'completion' "
                                  f"(keys: {sorted(record)})")


def _parse_lines(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield ``("path:line", record)`` for each non-blank line; invalid JSON raises naming the line."""
    return iter_jsonl(path, error=DataValidationError)


def iter_validated_jsonl(path: str | Path, strict: bool = False) -> Iterator[dict]:
    """Yield the records of a jsonl file, validating each; blank lines are skipped.

    Raises :class:`DataValidationError` naming ``path:line`` on invalid JSON or an invalid record.
    """
    for where, record in _parse_lines(path):
        validate_record(record, where, strict)
        yield record


def find_errors(path: str | Path, max_errors: int = 20, strict: bool = False) -> tuple[int, list[str]]:
    """Check a whole file: ``(number of valid records, up to max_errors error messages)``.

    Unlike :func:`iter_validated_jsonl` it keeps going past a bad record; invalid JSON still ends the scan,
    because after a broken line the rest of the file cannot be trusted.
    """
    valid, errors = 0, []
    try:
        for where, record in _parse_lines(path):
            try:
                validate_record(record, where, strict)
                valid += 1
            except DataValidationError as e:
                errors.append(str(e))
            if len(errors) >= max_errors:
                errors.append(f"{path}: stopped after {max_errors} errors")
                break
    except DataValidationError as e:
        errors.append(str(e))
    return valid, errors


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile (``q`` in [0, 100]) of an already sorted, non-empty list."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n·q/100), at least the first value
    return sorted_values[int(rank) - 1]


def file_stats(path: str | Path, tokenizer=None, max_seq_length: int | None = None) -> dict:
    """Counts (records, messages per role, user/assistant exchanges) and, with a tokenizer, token lengths.

    Lengths are those of the training encoding (:func:`open_instruct.data.encoding.encode_record`: tulu layout,
    BOS and EOS included) before truncation; ``over_<max_seq_length>`` counts the records finetune will cut.
    """
    from open_instruct.data.encoding import encode_record

    roles: Counter = Counter()
    records = exchanges = 0
    lengths: list[int] = []
    for record in iter_validated_jsonl(path):
        records += 1
        if "messages" in record:
            roles.update(m["role"] for m in record["messages"])
            exchanges += sum(m["role"] == "assistant" for m in record["messages"])
        else:
            exchanges += 1
        if tokenizer is not None:  # the exact training encoding, untruncated
            lengths.append(len(encode_record(record, tokenizer, max_seq_length=UNTRUNCATED)["input_ids"]))
    stats = {"records": records, "exchanges": exchanges, "messages_by_role": dict(roles)}
    if lengths:
        lengths.sort()
        stats["tokens"] = {f"p{q}": percentile(lengths, q) for q in (50, 90, 99)} | {"max": lengths[-1]}
        if max_seq_length is not None:
            stats["tokens"][f"over_{max_seq_length}"] = sum(n > max_seq_length for n in lengths)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="Validate messages/prompt-completion jsonl training files.")
    parser.add_argument("files", nargs="+", help="jsonl files to check")
    parser.add_argument("--strict", action="store_true",
                        help="also require clean conversations (alternating turns ending on the assistant, no empty "
                             "content); finetune itself trains on such records, as open-instruct does")
    parser.add_argument("--stats", action="store_true", help="also print record/turn counts (and token lengths)")
    parser.add_argument("--tokenizer", help="tokenizer name or path for token-length percentiles (with --stats)")
    parser.add_argument("--max_seq_length", type=int, help="with --tokenizer: also count records longer than this")
    args = parser.parse_args(argv)
    if args.tokenizer and not args.stats:
        parser.error("--tokenizer is only used with --stats")
    if args.max_seq_length is not None and args.max_seq_length < 1:
        parser.error(f"--max_seq_length must be >= 1, got {args.max_seq_length}")

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        check_model_source(args.tokenizer, "--tokenizer", need="")
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    failed = 0
    for path in args.files:
        try:
            valid, errors = find_errors(path, strict=args.strict)
        except OSError as e:
            valid, errors = 0, [f"{path}: cannot read ({e.strerror})"]
        if not valid and not errors:
            errors = [f"{path}: no records (the file is empty); finetune would refuse it"]
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        if errors:
            failed += 1
        elif args.stats:
            print(json.dumps({"file": str(path)} | file_stats(path, tokenizer, args.max_seq_length)))
        else:
            print(f"{path}: {valid} records OK")
    return 1 if failed else 0
