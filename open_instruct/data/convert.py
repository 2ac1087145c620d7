"""Convert the raw instruction-tuning sources into open-instruct's ``messages`` jsonl.

``scripts/prepare_train_data.sh`` downloads each source into ``<raw_data_dir>/<name>/`` in its official layout;
this module turns one or more of them into ``<output_dir>/<name>/<name>_data.jsonl``, one record a line::

    {"dataset": "dolly", "id": "dolly_17", "messages": [{"role": "user", "content": ...},
                                                       {"role": "assistant", "content": ...}]}

The output is open-instruct's (allenai/open-instruct at d61037f5, which the PRoLoRA authors used), record for
record and byte for byte, for the same raw files and ``--seed``: the same samples, templates, ids and order. That
takes upstream's random stream, consumed in upstream's order:

* ``--rng upstream`` (default): one ``random.Random(seed)`` for the whole run, handed from converter to converter in
  the order they run. ``--dataset`` runs them in the order given; without it, in :data:`CONVERTERS` order, which is
  upstream's (``scripts/prepare_train_data.sh`` keeps it), so a full run equals upstream's full run.
  Inside a converter the draws are upstream's: ``rng.sample`` over the whole population (indices, so the records
  themselves need not be held in memory), one ``rng.choices`` per templated example, in record order.
* ``--rng per_dataset``: each converter gets its own RNG seeded from ``(seed, name)``, so re-converting one source
  (or adding one) does not change the others. Not upstream's data; for experiments that do not compare with it.

What upstream lacks and this module adds without changing the output: raw files are streamed (JSON arrays element by
element, samples by index in two passes), the output is written atomically, and raw input that is not in the
expected layout (bad JSON, a missing or mistyped field) stops the run with a :class:`RawDataError` naming the file
and the record (line number or array index). Records upstream writes although they are unusable for training (an
empty answer, a ShareGPT chat starting with the assistant) are written too; ``--skip_unusable`` drops the ones that
fail :func:`open_instruct.data.validate.validate_record` instead (the ids of the others do not change).

Upstream's CoT converter reads the zero-shot file only when the *few-shot* count is positive (a copy-paste slip in
its guard), so ``--cot_few_shot_examples 0`` drops the zero-shot examples too. That is reproduced by default;
``--cot_fix_zero_shot_guard`` makes each count guard its own file.

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

from open_instruct import io_utils
from open_instruct.cli import ArgumentParser, UsageError
from open_instruct.data.templates import encode_few_shot_example, encode_instruction_example
from open_instruct.io_utils import atomic_open
from open_instruct.data.validate import DataValidationError, validate_record

logger = logging.getLogger(__name__)

Record = dict[str, Any]
CONVERTERS: dict[str, Callable[..., Iterator[Record]]] = {}  # registration order = upstream's run order
RNG_MODES = ("upstream", "per_dataset")


class RawDataError(UsageError, ValueError):
    """A raw source file is missing or not in the layout its converter expects; the message says where."""


def converter(name: str):
    """Register a converter under ``name`` (the raw sub-folder, the output folder and the ``dataset`` field)."""
    def register(fn):
        CONVERTERS[name] = fn
        return fn
    return register


def converter_rng(seed: int, name: str) -> random.Random:
    """The RNG of one converter under ``--rng per_dataset``: a function of the seed and the source name only."""
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


def sample_order(n: int, k: int | None, rng: random.Random) -> list[int] | None:
    """Indices of a ``rng.sample`` of ``k`` out of ``n`` items, in draw order; ``None`` (keep all, no draw) when
    ``k`` is None or not below ``n`` (upstream's ``if k < len(items): items = random.sample(items, k)``).

    ``rng.sample(items, k)`` picks positions from ``len(items)`` and ``k`` alone, so sampling ``range(n)`` draws the
    same positions, and consumes the same random numbers, as sampling the items themselves.
    """
    if k is None or k >= n:
        return None
    return rng.sample(range(n), k)


def sampled(items: Callable[[], Iterable[Any]], k: int | None, rng: random.Random) -> Iterator[Any]:
    """``rng.sample(list(items()), k)`` (all items, in order, if ``k`` is None/0 or not below their count), streamed.

    ``items`` is called once to count (and check) the records and once more to collect the ``k`` chosen ones,
    which are then yielded in draw order; only the sample is held in memory.
    """
    if not k:
        yield from items()
        return
    n = sum(1 for _ in items())
    order = sample_order(n, k, rng)
    if order is None:
        yield from items()
        return
    wanted = set(order)
    chosen = {i: item for i, item in enumerate(items()) if i in wanted}
    for i in order:
        yield chosen[i]


def chat_record(dataset: str, record_id: str, messages: list[dict[str, str]]) -> Record:
    return {"dataset": dataset, "id": record_id, "messages": messages}


def single_turn(dataset: str, record_id: str, prompt: Any, completion: Any) -> Record:
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


OPTIONAL_TEXT = (str, type(None))


# ----------------------------------------------------------------------------------------------------------
# Converters (one per source), registered in upstream's order. Each yields records.

@converter("super_ni")
def convert_super_ni(raw_dir: Path, rng: random.Random, zero_shot_per_task: int = 60,
                     few_shot_per_task: int = 20, n_demos: int = 2) -> Iterator[Record]:
    """Super-NaturalInstructions: per training task, sample instances and phrase them zero- or few-shot.

    Tasks are the lines of ``splits/xlingual/train_tasks.txt`` minus the ``_mmmlu_`` translations of MMLU (they
    would leak the MMLU test set). Per task ``zero_shot_per_task + few_shot_per_task`` instances are sampled (all,
    in file order, if there are not more than that); the first ``zero_shot_per_task`` of the sample become
    "definition + input" prompts through a random template, the rest few-shot prompts with ``n_demos`` of the
    task's positive examples drawn for each (all of them, in order, if there are not more). The instruction is
    ``Definition[0]``, the answer ``output[0]``, the id ``super_ni_<instance id>``.
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
        chosen = sample_order(len(instances), zero_shot_per_task + few_shot_per_task, rng)
        for rank, i in enumerate(range(len(instances)) if chosen is None else chosen):
            where = f"{task_file} Instances[{i}]"
            instance = instances[i]
            outputs = get_field(instance, "output", where, list)
            if not outputs or not isinstance(outputs[0], str):
                raise RawDataError(f"{where}: 'output' should be a non-empty list of strings")
            record_id = f"super_ni_{get_field(instance, 'id', where, (str, int))}"
            input_text = get_field(instance, "input", where)
            if rank < zero_shot_per_task:
                yield instruction_record("super_ni", record_id, definition[0], input_text, outputs[0], rng)
                continue
            demos = sample_order(len(positives), n_demos, rng)
            pairs = [tuple(get_field(positives[d], key, f"{task_file} Positive Examples[{d}]")
                           for key in ("input", "output"))
                     for d in (range(len(positives)) if demos is None else demos)]
            prompt, completion = encode_few_shot_example(definition[0], pairs, input_text, outputs[0])
            yield single_turn("super_ni", record_id, prompt, completion)


def _inputs_targets(dataset: str, items: Iterable[tuple[str, Any]]) -> Iterator[Record]:
    """Flan-format lines ``{"inputs", "targets"}`` → single-turn records ``<dataset>_<index>``."""
    for index, (where, example) in enumerate(items):
        prompt = flan_prompt(get_field(example, "inputs", where))
        yield single_turn(dataset, f"{dataset}_{index}", prompt, get_field(example, "targets", where))


@converter("cot")
def convert_cot(raw_dir: Path, rng: random.Random, zero_shot_examples: int = 50000,
                few_shot_examples: int = 50000, fix_zero_shot_guard: bool = False) -> Iterator[Record]:
    """Flan-v2 chain-of-thought submix: a sample of the zero-shot file (``cot_zsopt.jsonl``), then one of the
    few-shot file (``cot_fsopt.jsonl``), ids ``cot_<index>`` over both.

    As upstream, the zero-shot file is read only if ``few_shot_examples > 0`` (its guard tests the wrong count);
    ``fix_zero_shot_guard`` tests ``zero_shot_examples`` instead. A count of 0 with its file read keeps nothing.
    """
    def part(file_name: str, count: int) -> list[tuple[str, Any]]:
        path = raw_dir / file_name
        if count == 0:  # upstream samples k=0 from the loaded file: nothing kept, no draw, but the file must exist
            _require_file(path)
            return []
        return list(sampled(lambda: iter_jsonl(path), count, rng))

    zero_guard = zero_shot_examples if fix_zero_shot_guard else few_shot_examples
    examples = part("cot_zsopt.jsonl", zero_shot_examples) if zero_guard > 0 else []
    if few_shot_examples > 0:
        examples += part("cot_fsopt.jsonl", few_shot_examples)
    yield from _inputs_targets("cot", examples)


FLAN_V2_FILES = ("tulu_v1_resampled_flan_100k.jsonl", "tulu_v2_resampled_flan_50k.jsonl")


@converter("flan_v2")
def convert_flan_v2(raw_dir: Path, rng: random.Random, file: str = FLAN_V2_FILES[0],
                    examples: int | None = None) -> Iterator[Record]:
    """Flan-v2 resampled collection (Tulu v1: 100k, Tulu v2: 50k); ``examples`` keeps a random subset (an
    addition; upstream always keeps the whole file and draws nothing)."""
    yield from _inputs_targets("flan_v2", sampled(lambda: iter_jsonl(raw_dir / file), examples, rng))


def _instruction_source(dataset: str, items: Iterable[tuple[str, Any]], rng: random.Random,
                        input_key: str = "input", output_key: str = "output") -> Iterator[Record]:
    """Alpaca-like records ``{"instruction", input_key, output_key}`` → templated records ``<dataset>_<index>``.

    A missing or null input counts as no input (upstream needs the key; with it the output is the same).
    """
    for index, (where, example) in enumerate(items):
        instruction = get_field(example, "instruction", where)
        input_text = get_field(example, input_key, where, OPTIONAL_TEXT) if input_key in example else None
        output = get_field(example, output_key, where)
        yield instruction_record(dataset, f"{dataset}_{index}", instruction, input_text, output, rng)


@converter("dolly")
def convert_dolly(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Databricks Dolly 15k (jsonl of instruction/context/response/category); the context is the input."""
    yield from _instruction_source("dolly", iter_jsonl(raw_dir / "databricks-dolly-15k.jsonl"), rng,
                                   input_key="context", output_key="response")


@converter("self_instruct")
def convert_self_instruct(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Self-Instruct 82k GPT-3 generations (``all_instances_82K.jsonl``)."""
    yield from _instruction_source("self_instruct", iter_jsonl(raw_dir / "all_instances_82K.jsonl"), rng)


@converter("unnatural_instructions")
def convert_unnatural_instructions(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Unnatural Instructions core set: one instruction, several instances, ids counted over all instances.

    An instance's constraints are appended to the instruction on a new line unless they are empty/null or read
    "none"/"none." in any case (compared as they are, unstripped, as upstream does).
    """
    index = 0
    for where, task in iter_jsonl(raw_dir / "core_data.jsonl"):
        instruction = get_field(task, "instruction", where)
        for j, instance in enumerate(get_field(task, "instances", where, list)):
            here = f"{where} instances[{j}]"
            constraints = get_field(instance, "constraints", here, OPTIONAL_TEXT)
            full = instruction
            if constraints and constraints.lower() not in ("none", "none."):
                full = f"{instruction}\n{constraints}"
            yield instruction_record("unnatural_instructions", f"unnatural_instructions_{index}", full,
                                     get_field(instance, "input", here, OPTIONAL_TEXT),
                                     get_field(instance, "output", here), rng)
            index += 1


@converter("stanford_alpaca")
def convert_stanford_alpaca(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Stanford Alpaca 52k (``alpaca_data.json``)."""
    yield from _instruction_source("stanford_alpaca", iter_json_array(raw_dir / "alpaca_data.json"), rng)


@converter("code_alpaca")
def convert_code_alpaca(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """Code Alpaca 20k (``code_alpaca_20k.json``, a list of instruction/input/output)."""
    yield from _instruction_source("code_alpaca", iter_json_array(raw_dir / "code_alpaca_20k.json"), rng)


@converter("gpt4_alpaca")
def convert_gpt4_alpaca(raw_dir: Path, rng: random.Random, zh: bool = False) -> Iterator[Record]:
    """Alpaca instructions answered by GPT-4 (GPT-4-LLM); English only unless ``zh`` appends the Chinese set
    (ids continue the count, as upstream's ``load_zh``)."""
    def files() -> Iterator[tuple[str, Any]]:
        yield from iter_json_array(raw_dir / "alpaca_gpt4_data.json")
        if zh:
            yield from iter_json_array(raw_dir / "alpaca_gpt4_data_zh.json")
    yield from _instruction_source("gpt4_alpaca", files(), rng)


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant"}
SHAREGPT_SPLIT_FILE = "sharegpt_html_cleaned_and_split_2048.json"
SHAREGPT_FILES = ("sg_90k_part1_html_cleaned.json", "sg_90k_part2_html_cleaned.json")


@converter("sharegpt")
def convert_sharegpt(raw_dir: Path, rng: random.Random, files: list[str] | None = None,
                     examples: int | None = None) -> Iterator[Record]:
    """ShareGPT (JSON arrays of ``{"id", "conversations": [{"from", "value"}]}``).

    ``files`` defaults to upstream's input, ``sharegpt_html_cleaned_and_split_2048.json`` (Vicuna's 90k dump with
    long conversations split at 2,048 Llama tokens by upstream's ``split_sharegpt_conversations.py``), and to the
    two unsplit 90k parts when that file is absent (logged). human/user → user, gpt/chatgpt → assistant; a
    conversation with a system or bing turn is dropped, so is one with no turns; ids are ``sharegpt_<id>``.
    ``examples`` keeps a random subset.
    """
    if files is None:
        files = [SHAREGPT_SPLIT_FILE] if (raw_dir / SHAREGPT_SPLIT_FILE).is_file() else list(SHAREGPT_FILES)
        if files != [SHAREGPT_SPLIT_FILE]:
            logger.info("sharegpt: %s not found; converting the unsplit %s", SHAREGPT_SPLIT_FILE, ", ".join(files))

    def conversations() -> Iterator[tuple[str, Any]]:
        for name in files:
            yield from iter_json_array(raw_dir / name)

    for where, conversation in sampled(conversations, examples, rng):
        messages, dropped = [], False
        for j, turn in enumerate(get_field(conversation, "conversations", where, list)):
            sender = get_field(turn, "from", f"{where} conversations[{j}]")
            if sender in ("system", "bing"):
                dropped = True
                break
            if sender not in SHAREGPT_ROLES:
                raise RawDataError(f"{where} conversations[{j}]: unknown sender {sender!r}")
            messages.append({"role": SHAREGPT_ROLES[sender],  # the value is copied as it is, as upstream
                             "content": get_field(turn, "value", f"{where} conversations[{j}]", object)})
        if messages and not dropped:
            record_id = get_field(conversation, "id", where, (str, int))
            yield chat_record("sharegpt", f"sharegpt_{record_id}", messages)


def _quality(node: dict) -> float:
    """A reply's human-rated quality (``labels.quality.value``); unrated replies count as 0.0, as upstream."""
    quality = (node.get("labels") or {}).get("quality")
    return quality["value"] if isinstance(quality, dict) and "value" in quality else 0.0


@converter("oasst1")
def convert_oasst1(raw_dir: Path, rng: random.Random, top_k: int | None = None) -> Iterator[Record]:
    """OpenAssistant oasst1 message trees (``2023-04-12_oasst_ready.trees.jsonl``).

    Every path from a root prompt to a leaf assistant message becomes one conversation, ids ``oasst1_<count>`` in
    depth-first order. Deleted messages are dropped with their subtree; an assistant message whose replies are all
    deleted ends no conversation (it is not a leaf), as upstream. With ``top_k`` only the ``top_k`` replies of
    highest quality (``labels.quality.value``, ties in file order) are followed at each node.
    """
    count = 0
    for where, tree in iter_jsonl(raw_dir / "2023-04-12_oasst_ready.trees.jsonl"):
        root = get_field(tree, "prompt", where, dict)
        # Iterative depth-first walk; each stack entry is (node, its location, the conversation before it).
        stack: list[tuple[dict, str, list[dict[str, str]]]] = [(root, f"{where} prompt", [])]
        while stack:
            node, here, history = stack.pop()
            if not isinstance(node, dict):
                raise RawDataError(f"{here}: expected a JSON object, got {type(node).__name__}")
            if node.get("deleted"):
                continue
            role = {"prompter": "user", "assistant": "assistant"}.get(get_field(node, "role", here))
            if role is None:
                raise RawDataError(f"{here}: unknown role {node['role']!r} (expected 'prompter' or 'assistant')")
            conversation = history + [{"role": role, "content": get_field(node, "text", here)}]
            replies = get_field(node, "replies", here, list)
            if role == "assistant" and not replies:
                yield chat_record("oasst1", f"oasst1_{count}", conversation)
                count += 1
                continue
            children = [(j, r) for j, r in enumerate(replies) if not (isinstance(r, dict) and r.get("deleted"))]
            if top_k is not None:
                children = sorted(children, key=lambda jr: _quality(jr[1]), reverse=True)[:top_k]
            for j, reply in reversed(children):  # reversed: the stack then visits them in order
                stack.append((reply, f"{here} replies[{j}]", conversation))


@converter("lima")
def convert_lima(raw_dir: Path, rng: random.Random) -> Iterator[Record]:
    """LIMA (``train.jsonl`` with ``conversations``: a list of strings, user first, alternating); an odd
    final turn is cut, as upstream; ids ``lima_<index>``."""
    for index, (where, example) in enumerate(iter_jsonl(raw_dir / "train.jsonl")):
        turns = get_field(example, "conversations", where, list)
        for j, turn in enumerate(turns):
            if not isinstance(turn, str):
                raise RawDataError(f"{where}: conversations[{j}] should be a string, got {type(turn).__name__}")
        if len(turns) % 2:
            logger.warning("%s: odd number of turns in LIMA example %d; cutting the last one", where, index)
            turns = turns[:-1]
        messages = [{"role": "user" if j % 2 == 0 else "assistant", "content": turn} for j, turn in enumerate(turns)]
        yield chat_record("lima", f"lima_{index}", messages)


# ----------------------------------------------------------------------------------------------------------
# Running converters

def output_file(output_dir: str | Path, name: str) -> Path:
    return Path(output_dir) / name / f"{name}_data.jsonl"


def convert(name: str, raw_data_dir: str | Path, output_dir: str | Path, seed: int = 42,
            rng: random.Random | None = None, skip_unusable: bool = False, **options: Any) -> dict[str, int]:
    """Run one converter and write its output atomically; returns ``{"written": n, "skipped": m}``.

    ``rng`` is the run's random stream (``--rng upstream`` hands the same one to every converter in turn);
    without it the converter gets a fresh ``random.Random(seed)``, i.e. upstream run on this source alone.
    With ``skip_unusable`` records that fail :func:`validate_record` (e.g. an empty response) are dropped and
    counted (the first few reasons logged); by default every record is written, as upstream. A
    :class:`RawDataError` leaves no output file behind.
    """
    fn = CONVERTERS[name]
    raw_dir = Path(raw_data_dir) / name
    if not raw_dir.is_dir():
        raise RawDataError(f"{raw_dir}: raw folder of '{name}' not found (run scripts/prepare_train_data.sh)")
    rng = random.Random(seed) if rng is None else rng
    path = output_file(output_dir, name)
    written = skipped = 0
    with atomic_open(path) as f:
        for record in tqdm(fn(raw_dir, rng, **options), desc=name, unit=" records"):
            if skip_unusable:
                try:
                    validate_record(record, f"{name} record {record['id']}", strict=True)
                except DataValidationError as e:
                    skipped += 1
                    if skipped <= 5:
                        logger.warning("skipping: %s", e)
                    continue
            f.write(json.dumps(record) + "\n")  # json's defaults (ASCII escapes), as upstream: byte-equal files
            written += 1
    logger.info("%s: wrote %d records to %s (%d skipped as unusable)", name, written, path, skipped)
    return {"written": written, "skipped": skipped}


def converter_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The options of converter ``name`` taken from ``args.<name>_<option>`` (the CLI flags below)."""
    params = list(inspect.signature(CONVERTERS[name]).parameters)[2:]  # after (raw_dir, rng)
    return {param: getattr(args, f"{name}_{param}") for param in params}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Convert raw instruction data into messages jsonl.")
    parser.add_argument("--raw_data_dir", default="data/raw_train", help="folder with one sub-folder per source")
    parser.add_argument("--output_dir", default="data/processed", help="writes <output_dir>/<name>/<name>_data.jsonl")
    parser.add_argument("--dataset", nargs="+", choices=list(CONVERTERS),
                        help="sources to convert, in this order (default: every source whose raw folder exists, "
                             "in upstream's order)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rng", choices=RNG_MODES, default="upstream",
                        help="upstream: one random.Random(seed) stream through all converters in run order, as "
                             "open-instruct (default); per_dataset: each source seeded from (seed, name), so its "
                             "output does not depend on the other sources run")
    parser.add_argument("--skip_unusable", action="store_true",
                        help="drop records that fail validate_data (e.g. an empty answer) instead of writing them "
                             "as upstream does")
    parser.add_argument("--super_ni_zero_shot_per_task", type=int, default=60)
    parser.add_argument("--super_ni_few_shot_per_task", type=int, default=20)
    parser.add_argument("--super_ni_n_demos", type=int, default=2, help="positive examples per few-shot prompt")
    parser.add_argument("--cot_zero_shot_examples", type=int, default=50000)
    parser.add_argument("--cot_few_shot_examples", type=int, default=50000,
                        help="0 skips cot_fsopt.jsonl and, as upstream, cot_zsopt.jsonl too")
    parser.add_argument("--cot_fix_zero_shot_guard", action="store_true",
                        help="read cot_zsopt.jsonl when --cot_zero_shot_examples > 0 (upstream tests the few-shot "
                             "count; by default that is reproduced)")
    parser.add_argument("--flan_v2_file", default=FLAN_V2_FILES[0], choices=FLAN_V2_FILES)
    parser.add_argument("--flan_v2_examples", type=int, help="random subset size (default: the whole file)")
    parser.add_argument("--oasst1_top_k", type=int, help="follow only the k best-rated replies (default: all)")
    parser.add_argument("--gpt4_alpaca_zh", action="store_true", help="also convert the Chinese GPT-4 Alpaca set")
    parser.add_argument("--sharegpt_files", nargs="+",
                        help=f"default: {SHAREGPT_SPLIT_FILE} (upstream's), else {' '.join(SHAREGPT_FILES)}")
    parser.add_argument("--sharegpt_examples", type=int, help="random subset size (default: all conversations)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = args.dataset
    if names is None:
        names = [name for name in CONVERTERS if (Path(args.raw_data_dir) / name).is_dir()]
        missing = [name for name in CONVERTERS if name not in names]
        if missing:
            logger.info("no raw folder for %s under %s; skipping them", ", ".join(missing), args.raw_data_dir)
        if not names:
            raise RawDataError(f"{args.raw_data_dir}: no raw source folder found")
    for name in names:  # every requested source is there before the first output is written
        if not (Path(args.raw_data_dir) / name).is_dir():
            raise RawDataError(f"{Path(args.raw_data_dir) / name}: raw folder of '{name}' not found "
                               "(run scripts/prepare_train_data.sh)")
    stream = random.Random(args.seed)
    for name in names:  # a RawDataError (file and record named) ends the run with one `error:` line, exit 2
        rng = stream if args.rng == "upstream" else converter_rng(args.seed, name)
        convert(name, args.raw_data_dir, args.output_dir, args.seed, rng=rng, skip_unusable=args.skip_unusable,
                **converter_options(name, args))
