"""Convert the raw instruction-tuning sources into open-instruct's ``messages`` jsonl.

``scripts/prepare_train_data.sh`` downloads each source into ``<raw_data_dir>/<name>/`` in its official layout;
this module turns one or more of them into ``<output_dir>/<name>/<name>_data.jsonl``, one record a line::

    {"dataset": "dolly", "id": "dolly_17", "messages": [{"role": "user", "content": ...},
                                                       {"role": "assistant", "content": ...}]}

Design points:

* One converter per source, registered by name in :data:`CONVERTERS`. A converter is a generator: it takes the
  source's raw folder, its own ``random.Random`` and its options, and yields records. The writer streams them
  to disk (atomically, with a progress bar), so large sources never sit in memory at once; where a converter
  must sample from a large file it uses reservoir sampling, which keeps only the sample.
* Each converter's RNG is seeded from ``(seed, name)``. Unlike upstream (one global RNG shared in run order),
  a source's output depends only on the seed and its own options, never on which other sources ran before it.
* Instruction/input/output sources are phrased with a template drawn per example
  (:mod:`open_instruct.instruction_encode_templates`).
* Raw input that is not in the expected layout (bad JSON, a missing or mistyped field) stops the run with a
  :class:`RawDataError` naming the file and the record (line number or array index). Records that are well
  formed but unusable for training (an empty answer, turns that do not alternate) are skipped and counted,
  so every written record passes :func:`open_instruct.validate_data.validate_record`.

CLI::

    python -m open_instruct.reformat_datasets --raw_data_dir data/raw_train --output_dir data/processed \\
        --dataset super_ni cot --seed 42 --super_ni_zero_shot_per_task 60 --super_ni_few_shot_per_task 20

Without ``--dataset`` every source whose raw folder exists is converted.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from open_instruct.instruction_encode_templates import encode_few_shot_example, encode_instruction_example
from open_instruct import io_utils
from open_instruct.io_utils import atomic_open
from open_instruct.validate_data import DataValidationError, validate_record

logger = logging.getLogger(__name__)

Record = dict[str, Any]
CONVERTERS: dict[str, Callable[..., Iterator[Record]]] = {}


class RawDataError(ValueError):
    """A raw source file is missing or not in the layout its converter expects; the message says where."""


def converter(name: str):
    """Register a converter under ``name`` (the raw sub-folder, the output folder and the ``dataset`` field)."""
    def register(fn):
        CONVERTERS[name] = fn
        return fn
    return register


def converter_rng(seed: int, name: str) -> random.Random:
    """The RNG of one converter, a function of the global seed and the source name only."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ----------------------------------------------------------------------------------------------------------
# Reading raw files, with errors that name file and record

def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise RawDataError(f"{path}: raw file not found (download it with scripts/prepare_train_data.sh)")
    return path


def iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``("file:line", object)`` for each non-blank line of a jsonl file."""
    yield from io_utils.iter_jsonl(_require_file(path), error=RawDataError)


def iter_json_array(path: Path, chunk_chars: int = 1 << 20,
                    max_element_chars: int = 1 << 26) -> Iterator[tuple[str, Any]]:
    """Yield ``("file[index]", element)`` for each element of a file holding one JSON array.

    Reads the file in chunks and decodes one element at a time, so a multi-gigabyte array (ShareGPT) is
    never held in memory whole; only the current element and one chunk are. An element that still does not
    decode after ``max_element_chars`` characters is reported as invalid rather than read on to the end.
    """
    decoder = json.JSONDecoder()
    with open(_require_file(path), encoding="utf-8") as f:
        buffer, pos, eof, index = "", 0, False, 0

        def fill() -> bool:
            nonlocal buffer, pos, eof
            chunk = f.read(chunk_chars)
            buffer, pos = buffer[pos:] + chunk, 0
            eof = not chunk
            return bool(chunk)

        def next_char() -> str:
            # Skip whitespace, reading more as needed; "" means end of file.
            nonlocal pos
            while True:
                while pos < len(buffer) and buffer[pos].isspace():
                    pos += 1
                if pos < len(buffer) or not fill():
                    return buffer[pos] if pos < len(buffer) else ""

        if next_char() != "[":
            raise RawDataError(f"{path}: expected a JSON array (the file should start with '[')")
        pos += 1
        if next_char() == "]":
            return
        while True:
            where = f"{path}[{index}]"
            next_char()
            while True:
                try:
                    element, end = decoder.raw_decode(buffer, pos)
                    if end < len(buffer) or eof:  # a value that touches the chunk end may be cut; read on
                        break
                except json.JSONDecodeError as e:
                    if eof or len(buffer) - pos > max_element_chars:
                        raise RawDataError(f"{where}: invalid JSON ({e.msg})") from None
                fill()  # the element may continue in the next chunk
            pos = end
            yield where, element
            index += 1
            separator = next_char()
            if separator == "]":
                return
            if separator != ",":
                found = repr(separator) if separator else "end of file"
                raise RawDataError(f"{where}: expected ',' or ']' after the element, found {found}")
            pos += 1


def get_field(record: Any, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """``record[key]``, checked to exist and to have type ``kind``; otherwise a RawDataError naming ``where``."""
    if not isinstance(record, dict):
        raise RawDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise RawDataError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RawDataError(f"{where}: field '{key}' should be {expected}, got {type(value).__name__}")
    return value


def reservoir_sample(items: Iterable[Any], k: int | None, rng: random.Random) -> Iterable[Any]:
    """A uniform sample of ``k`` items from a stream, in stream order (all items if the stream is shorter).

    Algorithm R: memory holds only the ``k`` kept items. With ``k=None`` the stream itself is returned, still
    lazy, so "keep everything" costs no memory.
    """
    if k is None:
        return items
    kept: list[tuple[int, Any]] = []
    for i, item in enumerate(items):
        if i < k:
            kept.append((i, item))
        else:
            j = rng.randrange(i + 1)
            if j < k:
                kept[j] = (i, item)
    return [item for _, item in sorted(kept, key=lambda pair: pair[0])]


def chat_record(dataset: str, record_id: str, messages: list[dict[str, str]]) -> Record:
    return {"dataset": dataset, "id": record_id, "messages": messages}


def single_turn(dataset: str, record_id: str, prompt: str, completion: str) -> Record:
    return chat_record(dataset, record_id, [{"role": "user", "content": prompt},
                                           {"role": "assistant", "content": completion}])


def instruction_record(dataset: str, record_id: str, instruction: str, input: str | None, output: str,
                       rng: random.Random) -> Record:
    prompt, completion = encode_instruction_example(instruction, input, output, rng)
    return single_turn(dataset, record_id, prompt, completion)


def flan_prompt(inputs: str) -> str:
    """Flan-style prompts end with a newline unless they already end with one or with a colon."""
    if inputs.endswith("\n") or inputs.rstrip().endswith(":"):
        return inputs
    return inputs + "\n"


# ----------------------------------------------------------------------------------------------------------
# Converters (one per source). Each yields records; the writer validates and stores them.

@converter("super_ni")
def convert_super_ni(raw_dir: Path, rng: random.Random, zero_shot_per_task: int = 60,
                     few_shot_per_task: int = 20, n_demos: int = 2) -> Iterator[Record]:
    """Super-NaturalInstructions: per training task, sample instances and phrase them zero- or few-shot.

    Tasks are the lines of ``splits/xlingual/train_tasks.txt`` minus the ``_mmmlu_`` translations of MMLU (they
    would leak the MMLU test set). Per task ``zero_shot_per_task + few_shot_per_task`` instances are sampled
    (all if fewer); the first ``zero_shot_per_task`` become "definition + input" prompts through a random
    template, the rest become few-shot prompts with up to ``n_demos`` of the task's positive examples.
    The instruction is ``Definition[0]`` and the answer ``output[0]``.
    """
    split_file = _require_file(raw_dir / "splits" / "xlingual" / "train_tasks.txt")
    tasks = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines()]
    tasks = [task for task in tasks if task and "_mmmlu_" not in task]
    for task in tasks:
        task_file = _require_file(raw_dir / "tasks" / f"{task}.json")
        try:
            data = json.loads(task_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RawDataError(f"{task_file}: invalid JSON ({e.msg} at line {e.lineno})") from None
        definition = get_field(data, "Definition", str(task_file), list)
        if not definition or not isinstance(definition[0], str):
            raise RawDataError(f"{task_file}: 'Definition' should be a non-empty list of strings")
        instances = get_field(data, "Instances", str(task_file), list)
        positives = get_field(data, "Positive Examples", str(task_file), list)
        k = zero_shot_per_task + few_shot_per_task
        chosen = sorted(rng.sample(range(len(instances)), k)) if len(instances) > k else range(len(instances))
        for rank, i in enumerate(chosen):
            where = f"{task_file} Instances[{i}]"
            instance = instances[i]
            outputs = get_field(instance, "output", where, list)
            if not outputs or not isinstance(outputs[0], str):
                raise RawDataError(f"{where}: 'output' should be a non-empty list of strings")
            record_id = f"super_ni_{get_field(instance, 'id', where)}"
            input_text = get_field(instance, "input", where)
            if rank < zero_shot_per_task:
                yield instruction_record("super_ni", record_id, definition[0], input_text, outputs[0], rng)
                continue
            demos = sorted(rng.sample(range(len(positives)), min(n_demos, len(positives))))
            demo_pairs = [(get_field(positives[d], "input", f"{task_file} Positive Examples[{d}]"),
                           get_field(positives[d], "output", f"{task_file} Positive Examples[{d}]")) for d in demos]
            prompt, completion = encode_few_shot_example(definition[0], demo_pairs, input_text, outputs[0])
            yield single_turn("super_ni", record_id, prompt, completion)


def _inputs_targets(dataset: str, items: Iterable[tuple[str, Any]], prefix: str) -> Iterator[Record]:
    """Flan-format lines ``{"inputs", "targets"}`` → single-turn records; ids carry the raw line."""
    for where, example in items:
        line = where.rsplit(":", 1)[1]
        prompt = flan_prompt(get_field(example, "inputs", where))
        yield single_turn(dataset, f"{prefix}_{line}", prompt, get_field(example, "targets", where))


@converter("cot")
def convert_cot(raw_dir: Path, rng: random.Random, zero_shot_examples: int = 50000,
                few_shot_examples: int = 50000) -> Iterator[Record]:
    """Flan-v2 chain-of-thought submix: samples from the zero-shot (``cot_zsopt.jsonl``) and few-shot
    (``cot_fsopt.jsonl``) files. Each count guards its own file (upstream checked the few-shot count before
    loading the zero-shot file); 0 skips a file."""
    for count, file_name, prefix in ((zero_shot_examples, "cot_zsopt.jsonl", "cot_zs"),
                                     (few_shot_examples, "cot_fsopt.jsonl", "cot_fs")):
        if count > 0:
            sample = reservoir_sample(iter_jsonl(raw_dir / file_name), count, rng)
            yield from _inputs_targets("cot", sample, prefix)


FLAN_V2_FILES = ("tulu_v1_resampled_flan_100k.jsonl", "tulu_v2_resampled_flan_50k.jsonl")


@converter("flan_v2")
def convert_flan_v2(raw_dir: Path, rng: random.Random, file: str = FLAN_V2_FILES[0],
                    examples: int | None = None) -> Iterator[Record]:
    """Flan-v2 resampled collection (Tulu v1: 100k, Tulu v2: 50k); optionally a random subset of ``examples``."""
    yield from _inputs_targets("flan_v2", reservoir_sample(iter_jsonl(raw_dir / file), examples, rng), "flan_v2")


def _instruction_source(dataset: str, items: Iterable[tuple[str, Any]], rng: random.Random,
                        input_key: str = "input", output_key: str = "output", prefix: str | None = None
                        ) -> Iterator[Record]:
    """Alpaca-like records ``{"instruction", input_key, output_key}`` → templated single-turn records."""
    for index, (where, example) in enumerate(items):
        instruction = get_field(example, "instruction", where)
        input_text = get_field(example, input_key, where) if input_key in example else ""
        output = get_field(example, output_key, where)
        yield instruction_record(dataset, f"{prefix or dataset}_{index}", instruction, input_text, output, rng)


@converter("code_alpaca")
def convert_code_alpaca(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Code Alpaca 20k (``code_alpaca_20k.json``, a list of instruction/input/output)."""
    yield from _instruction_source("code_alpaca", iter_json_array(raw_dir / "code_alpaca_20k.json"), rng)


@converter("dolly")
def convert_dolly(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Databricks Dolly 15k (jsonl of instruction/context/response/category); the context is the input."""
    yield from _instruction_source("dolly", iter_jsonl(raw_dir / "databricks-dolly-15k.jsonl"), rng,
                                   input_key="context", output_key="response")


@converter("stanford_alpaca")
def convert_stanford_alpaca(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Stanford Alpaca 52k (``alpaca_data.json``)."""
    yield from _instruction_source("stanford_alpaca", iter_json_array(raw_dir / "alpaca_data.json"), rng)


@converter("self_instruct")
def convert_self_instruct(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Self-Instruct 82k GPT-3 generations (``all_instances_82K.jsonl``)."""
    yield from _instruction_source("self_instruct", iter_jsonl(raw_dir / "all_instances_82K.jsonl"), rng)


@converter("gpt4_alpaca")
def convert_gpt4_alpaca(raw_dir: Path, rng: random.Random, zh: bool = False) -> Iterator[Record]:
    """Alpaca instructions answered by GPT-4 (GPT-4-LLM); English only unless ``zh`` adds the Chinese set."""
    yield from _instruction_source("gpt4_alpaca", iter_json_array(raw_dir / "alpaca_gpt4_data.json"), rng)
    if zh:
        yield from _instruction_source("gpt4_alpaca", iter_json_array(raw_dir / "alpaca_gpt4_data_zh.json"), rng,
                                       prefix="gpt4_alpaca_zh")


@converter("unnatural_instructions")
def convert_unnatural_instructions(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Unnatural Instructions core set: one instruction, several instances; an instance's constraints
    (unless "None") are appended to the instruction on a new line."""
    for where, task in iter_jsonl(raw_dir / "core_data.jsonl"):
        instruction = get_field(task, "instruction", where)
        for j, instance in enumerate(get_field(task, "instances", where, list)):
            here = f"{where} instances[{j}]"
            constraints = (get_field(instance, "constraints", here, (str, type(None))) or "").strip()
            full = instruction if constraints.lower() in ("", "none", "none.") else f"{instruction}\n{constraints}"
            line = where.rsplit(":", 1)[1]
            yield instruction_record("unnatural_instructions", f"unnatural_instructions_{line}_{j}", full,
                                     get_field(instance, "input", here), get_field(instance, "output", here), rng)


@converter("oasst1")
def convert_oasst1(raw_dir: Path, rng: random.Random, top_k: int | None = None) -> Iterator[Record]:
    """OpenAssistant oasst1 message trees (``2023-04-12_oasst_ready.trees.jsonl``).

    Every path from the root prompt to an assistant message (a leaf or not) becomes one conversation; deleted
    messages are dropped together with their subtree. With ``top_k`` only the ``top_k`` best-ranked assistant
    replies to each prompt are followed (``rank`` 0 is best; unranked replies come last).
    """
    for where, tree in iter_jsonl(raw_dir / "2023-04-12_oasst_ready.trees.jsonl"):
        root = get_field(tree, "prompt", where, dict)
        # Iterative depth-first walk; each stack entry is (node, its location, the conversation before it).
        stack: list[tuple[dict, str, list[dict[str, str]]]] = [(root, f"{where} prompt", [])]
        while stack:
            node, here, history = stack.pop()
            if node.get("deleted"):
                continue
            role = {"prompter": "user", "assistant": "assistant"}.get(get_field(node, "role", here))
            if role is None:
                raise RawDataError(f"{here}: unknown role {node['role']!r} (expected 'prompter' or 'assistant')")
            conversation = history + [{"role": role, "content": get_field(node, "text", here)}]
            if role == "assistant":
                yield chat_record("oasst1", f"oasst1_{get_field(node, 'message_id', here)}", conversation)
            replies = list(enumerate(get_field(node, "replies", here, list)))
            if role == "user" and top_k is not None:
                ranked = sorted(replies, key=lambda r: (r[1].get("rank") is None, r[1].get("rank") or 0, r[0]))
                replies = sorted(ranked[:top_k])
            for j, reply in reversed(replies):  # reversed so the walk visits replies in file order
                stack.append((reply, f"{here} replies[{j}]", conversation))


def _alternating(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop leading assistant turns and a trailing user turn, so a chat starts with user and ends with assistant."""
    start = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    messages = messages[start:]
    if messages and messages[-1]["role"] == "user":
        messages = messages[:-1]
    return messages


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant"}
SHAREGPT_FILES = ("sg_90k_part1_html_cleaned.json", "sg_90k_part2_html_cleaned.json")


@converter("sharegpt")
def convert_sharegpt(raw_dir: Path, rng: random.Random, files: tuple[str, ...] = SHAREGPT_FILES,
                     examples: int | None = None) -> Iterator[Record]:
    """ShareGPT (Vicuna's HTML-cleaned 90k dump, JSON arrays of ``{"id", "conversations": [{"from", "value"}]}``).

    human/user → user, gpt/chatgpt → assistant; conversations with a system or bing turn are dropped. Files
    are parsed incrementally; ``examples`` keeps a random subset (reservoir). Upstream additionally split long
    conversations with a Llama-2 tokenizer; here long ones are truncated by the trainer's max_seq_length.
    """
    def conversations() -> Iterator[tuple[str, Any]]:
        for name in files:
            yield from iter_json_array(raw_dir / name)

    for where, conversation in reservoir_sample(conversations(), examples, rng):
        messages, dropped = [], False
        for j, turn in enumerate(get_field(conversation, "conversations", where, list)):
            sender = get_field(turn, "from", f"{where} conversations[{j}]")
            if sender in ("system", "bing"):
                dropped = True
                break
            if sender not in SHAREGPT_ROLES:
                raise RawDataError(f"{where} conversations[{j}]: unknown sender {sender!r}")
            messages.append({"role": SHAREGPT_ROLES[sender],
                             "content": get_field(turn, "value", f"{where} conversations[{j}]")})
        if not dropped:
            record_id = get_field(conversation, "id", where, (str, int))
            yield chat_record("sharegpt", f"sharegpt_{record_id}", _alternating(messages))


@converter("lima")
def convert_lima(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """LIMA (``train.jsonl`` with ``conversations``: a list of strings, user first, alternating); an odd
    final user turn is dropped."""
    for index, (where, example) in enumerate(iter_jsonl(raw_dir / "train.jsonl")):
        turns = get_field(example, "conversations", where, list)
        for j, turn in enumerate(turns):
            if not isinstance(turn, str):
                raise RawDataError(f"{where}: conversations[{j}] should be a string, got {type(turn).__name__}")
        messages = [{"role": "user" if j % 2 == 0 else "assistant", "content": turn} for j, turn in enumerate(turns)]
        yield chat_record("lima", f"lima_{index}", _alternating(messages))


# ----------------------------------------------------------------------------------------------------------
# Running converters

def output_file(output_dir: str | Path, name: str) -> Path:
    return Path(output_dir) / name / f"{name}_data.jsonl"


def convert(name: str, raw_data_dir: str | Path, output_dir: str | Path, seed: int = 42,
            **options: Any) -> dict[str, int]:
    """Run one converter and write its output atomically; returns ``{"written": n, "skipped": m}``.

    Records that fail :func:`validate_record` (e.g. an empty response) are skipped and counted; the first few
    reasons are logged. A :class:`RawDataError` leaves no output file behind.
    """
    fn = CONVERTERS[name]
    raw_dir = Path(raw_data_dir) / name
    if not raw_dir.is_dir():
        raise RawDataError(f"{raw_dir}: raw folder of '{name}' not found (run scripts/prepare_train_data.sh)")
    rng = converter_rng(seed, name)
    path = output_file(output_dir, name)
    written = skipped = 0
    with atomic_open(path) as f:
        for record in tqdm(fn(raw_dir, rng, **options), desc=name, unit=" records"):
            try:
                validate_record(record, f"{name} record {record['id']}")
            except DataValidationError as e:
                skipped += 1
                if skipped <= 5:
                    logger.warning("skipping: %s", e)
                continue
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    logger.info("%s: wrote %d records to %s (%d skipped as unusable)", name, written, path, skipped)
    return {"written": written, "skipped": skipped}


def converter_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The options of converter ``name`` taken from ``args.<name>_<option>`` (the CLI flags below)."""
    params = list(inspect.signature(CONVERTERS[name]).parameters)[2:]  # after (raw_dir, rng)
    return {param: getattr(args, f"{name}_{param}") for param in params}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert raw instruction data into messages jsonl.")
    parser.add_argument("--raw_data_dir", default="data/raw_train", help="folder with one sub-folder per source")
    parser.add_argument("--output_dir", default="data/processed", help="writes <output_dir>/<name>/<name>_data.jsonl")
    parser.add_argument("--dataset", nargs="+", choices=sorted(CONVERTERS),
                        help="sources to convert (default: every source whose raw folder exists)")
    parser.add_argument("--seed", type=int, default=42, help="each source's RNG is seeded from (seed, name)")
    parser.add_argument("--super_ni_zero_shot_per_task", type=int, default=60)
    parser.add_argument("--super_ni_few_shot_per_task", type=int, default=20)
    parser.add_argument("--super_ni_n_demos", type=int, default=2, help="positive examples per few-shot prompt")
    parser.add_argument("--cot_zero_shot_examples", type=int, default=50000, help="0 skips cot_zsopt.jsonl")
    parser.add_argument("--cot_few_shot_examples", type=int, default=50000, help="0 skips cot_fsopt.jsonl")
    parser.add_argument("--flan_v2_file", default=FLAN_V2_FILES[0], choices=FLAN_V2_FILES)
    parser.add_argument("--flan_v2_examples", type=int, help="random subset size (default: the whole file)")
    parser.add_argument("--oasst1_top_k", type=int, help="follow only the k best-ranked replies (default: all)")
    parser.add_argument("--gpt4_alpaca_zh", action="store_true", help="also convert the Chinese GPT-4 Alpaca set")
    parser.add_argument("--sharegpt_files", nargs="+", default=list(SHAREGPT_FILES))
    parser.add_argument("--sharegpt_examples", type=int, help="random subset size (default: all conversations)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = args.dataset
    if names is None:
        names = [name for name in CONVERTERS if (Path(args.raw_data_dir) / name).is_dir()]
        missing = sorted(set(CONVERTERS) - set(names))
        if missing:
            logger.info("no raw folder for %s under %s; skipping them", ", ".join(missing), args.raw_data_dir)
        if not names:
            raise SystemExit(f"error: no raw source folder found under {args.raw_data_dir}")
    for name in names:
        try:
            convert(name, args.raw_data_dir, args.output_dir, args.seed, **converter_options(name, args))
        except RawDataError as e:
            raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
