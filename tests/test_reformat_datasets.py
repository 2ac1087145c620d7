"""Converters of reformat_datasets on small fixtures in each source's official raw layout (tests/fixtures/raw_train)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from open_instruct.data import convert as rd
from open_instruct.data.templates import (
    TEMPLATES_WITH_INPUT,
    TEMPLATES_WITHOUT_INPUT,
    encode_few_shot_example,
    encode_instruction_example,
)

RAW = Path(__file__).parent / "fixtures" / "raw_train"
SMALL_SUPER_NI = {"zero_shot_per_task": 3, "few_shot_per_task": 2, "n_demos": 2}


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(name: str, out: Path, seed: int = 42, **options) -> list[dict]:
    """Convert one fixture source (a fresh random.Random(seed), as upstream run on it alone); its records."""
    if name == "super_ni":
        options = SMALL_SUPER_NI | options
    rd.convert(name, RAW, out, seed, **options)
    return read_records(rd.output_file(out, name))


def chat(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]


def is_templated(prompt: str, completion: str, instruction: str, input: str | None, output: str) -> bool:
    """True if (prompt, completion) is one of our templates filled with the stripped fields."""
    fields = {"instruction": instruction.strip(), "input": (input or "").strip(), "output": output.strip()}
    templates = TEMPLATES_WITH_INPUT if fields["input"] else TEMPLATES_WITHOUT_INPUT
    return any(p.format(**fields) == prompt and c.format(**fields) == completion for p, c, _ in templates)


# --- templates ------------------------------------------------------------------------------------------

def test_templates_cover_both_cases_and_use_all_fields():
    assert len(TEMPLATES_WITH_INPUT) >= 10 and len(TEMPLATES_WITHOUT_INPUT) >= 10
    for prompt, completion, weight in TEMPLATES_WITH_INPUT:
        assert "{instruction}" in prompt and "{input}" in prompt and "{output}" in completion and weight > 0
    for prompt, completion, weight in TEMPLATES_WITHOUT_INPUT:
        assert "{instruction}" in prompt and "{input}" not in prompt and "{output}" in completion and weight > 0


def test_template_choice_follows_the_rng_and_the_weights():
    draws = [encode_instruction_example("Do it.", "", "done", random.Random(s))[0] for s in range(400)]
    assert len(set(draws)) > 8  # many phrasings are used
    # the two heaviest no-input templates are drawn more often than the lightest one
    assert draws.count("Do it.\n\n") > draws.count("Task: Do it.\n\n")
    assert encode_instruction_example(" a ", " b ", " c ", random.Random(3)) == \
        encode_instruction_example("a", "b", "c", random.Random(3))
    assert encode_instruction_example("Do it.", "   ", "done", random.Random(0))[0] in \
        {p.format(instruction="Do it.") for p, _, _ in TEMPLATES_WITHOUT_INPUT}


def test_few_shot_layout():
    prompt, completion = encode_few_shot_example("Add.", [("1 1", "2"), (" 2 2 ", "4 ")], "3 3", " 6 ")
    assert prompt == "Add.\n\nInput:\n1 1\nOutput:\n2\n\nInput:\n2 2\nOutput:\n4\n\nInput:\n3 3\nOutput:\n"
    assert completion == "6"


# --- one test per converter --------------------------------------------------------------------------------

def test_super_ni(tmp_path):
    records = run("super_ni", tmp_path)
    task1 = json.loads((RAW / "super_ni/tasks/task001_capital_question_answering.json").read_text())
    by_input = {inst["input"]: inst for inst in task1["Instances"]}
    ids = [r["id"] for r in records]
    # task001 has 8 instances → 3 + 2 sampled; task002 has 2 → both, zero-shot; the _mmmlu_ task is excluded
    assert sum(i.startswith("super_ni_task001-") for i in ids) == 5
    assert [i for i in ids if i.startswith("super_ni_task002-")] == ["super_ni_task002-0", "super_ni_task002-1"]
    assert not any("task003" in i for i in ids) and len(set(ids)) == len(ids)
    definition = task1["Definition"][0]
    task1_records = [r for r in records if r["id"].startswith("super_ni_task001-")]
    demos = {(d["input"], d["output"]) for d in task1["Positive Examples"]}
    for k, record in enumerate(task1_records):
        user, assistant = record["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        instance = next(inst for inst in task1["Instances"] if f"super_ni_{inst['id']}" == record["id"])
        assert assistant["content"] == instance["output"][0]  # output[0], not the upper-case alternative
        if k < 3:
            assert is_templated(user["content"], assistant["content"], definition, instance["input"],
                                instance["output"][0])
        else:
            blocks = user["content"].split("\n\n")
            assert blocks[0] == definition and blocks[-1] == f"Input:\n{instance['input']}\nOutput:\n"
            shown = [tuple(b.removeprefix("Input:\n").split("\nOutput:\n")) for b in blocks[1:-1]]
            assert len(shown) == 2 and set(shown) <= demos
    assert set(by_input)  # fixture sanity
    task2 = {r["id"]: r for r in records}["super_ni_task002-1"]["messages"]
    assert is_templated(task2[0]["content"], task2[1]["content"], 'Classify the sentiment of the review as '
                        '"positive" or "negative".', "Great service, friendly staff!", "positive")


def test_super_ni_counts_follow_options(tmp_path):
    records = run("super_ni", tmp_path, zero_shot_per_task=1, few_shot_per_task=0)
    assert sorted(r["id"][:len("super_ni_task00x")] for r in records) == \
        ["super_ni_task001", "super_ni_task002", "super_ni_task004"]
    assert all("Input:\n" not in r["messages"][0]["content"] for r in records)  # zero-shot only
    # the default 60 + 20: task004 has 95 instances, so 80 are sampled; the small tasks are taken whole
    default = run("super_ni", tmp_path, zero_shot_per_task=60, few_shot_per_task=20)
    task4 = [r for r in default if r["id"].startswith("super_ni_task004-")]
    assert len(task4) == 80 and len({r["id"] for r in task4}) == 80
    few = [r for r in task4 if r["messages"][0]["content"].count("Input:\n") == 3]  # 2 demos + the query
    assert task4[60:] == few and len(few) == 20


def test_cot_samples_each_file_and_reproduces_the_guard_bug(tmp_path):
    records = run("cot", tmp_path, zero_shot_examples=2, few_shot_examples=10)
    assert [r["id"] for r in records] == [f"cot_{i}" for i in range(6)]  # 2 sampled + the whole few-shot file
    fs = {r["id"]: r["messages"] for r in records}
    assert fs["cot_2"] == chat("Q: Is the sky blue? A: yes.\n\nQ: Is fire cold?\nA:",
                               "Fire is hot. So the answer is no.")
    assert fs["cot_3"][0]["content"] == "Premise: a dog runs.\nHypothesis: an animal moves.\n"
    assert fs["cot_4"][0]["content"] == "Solve 3*3.\n"
    # Upstream reads the zero-shot file only when the few-shot count is positive: reproduced by default ...
    assert run("cot", tmp_path, zero_shot_examples=3, few_shot_examples=0) == []
    # ... and fixed on request
    fixed = run("cot", tmp_path, zero_shot_examples=3, few_shot_examples=0, fix_zero_shot_guard=True)
    assert len(fixed) == 3 and [r["id"] for r in fixed] == ["cot_0", "cot_1", "cot_2"]


def test_flan_v2_file_choice_and_prompt_rule(tmp_path):
    records = run("flan_v2", tmp_path)
    assert [r["id"] for r in records] == [f"flan_v2_{i}" for i in range(5)]
    assert records[0]["messages"] == chat("Translate to German: Good morning\n", "Guten Morgen")
    assert records[1]["messages"][0]["content"].endswith("Summary:")  # ends with ':' → unchanged
    assert records[2]["messages"][0]["content"] == "Is 7 prime?\n"  # already ends with a newline
    v2 = run("flan_v2", tmp_path, file="tulu_v2_resampled_flan_50k.jsonl")
    assert [r["messages"] for r in v2] == [chat("Write a title for: Rain expected all week.\n", "A Wet Week Ahead")]
    assert len(run("flan_v2", tmp_path, examples=2)) == 2


@pytest.mark.parametrize("name,file,input_key,output_key", [
    ("code_alpaca", "code_alpaca/code_alpaca_20k.json", "input", "output"),
    ("stanford_alpaca", "stanford_alpaca/alpaca_data.json", "input", "output"),
    ("gpt4_alpaca", "gpt4_alpaca/alpaca_gpt4_data.json", "input", "output"),
    ("self_instruct", "self_instruct/all_instances_82K.jsonl", "input", "output"),
    ("dolly", "dolly/databricks-dolly-15k.jsonl", "context", "response"),
])
def test_instruction_sources(tmp_path, name, file, input_key, output_key):
    path = RAW / file
    raw = json.loads(path.read_text()) if path.suffix == ".json" else \
        [json.loads(line) for line in path.read_text().splitlines()]
    records = run(name, tmp_path)
    assert [r["id"] for r in records] == [f"{name}_{i}" for i in range(len(raw))]  # empty answers written too
    for example, record in zip(raw, records):
        assert record["dataset"] == name
        user, assistant = record["messages"]
        assert is_templated(user["content"], assistant["content"], example["instruction"], example[input_key],
                            example[output_key])
    if name == "dolly":  # an empty answer is kept, as upstream; --skip_unusable drops it, ids unchanged
        kept = rd.convert(name, RAW, tmp_path / "skip", skip_unusable=True)
        skipped = read_records(rd.output_file(tmp_path / "skip", name))
        assert kept["skipped"] == sum(not e[output_key].strip() for e in raw) > 0
        assert [r["id"] for r in skipped] == [r["id"] for r in records if r["messages"][1]["content"].strip()]


def test_gpt4_alpaca_chinese_only_when_asked(tmp_path):
    assert len(run("gpt4_alpaca", tmp_path)) == 2
    records = run("gpt4_alpaca", tmp_path, zh=True)
    assert [r["id"] for r in records] == [f"gpt4_alpaca_{i}" for i in range(4)]  # one count over both files
    assert records[3]["messages"][1]["content"] == "I like tea."


def test_unnatural_instructions_appends_constraints(tmp_path):
    records = [[m["content"] for m in r["messages"]] for r in run("unnatural_instructions", tmp_path)]
    base, french = "You are given a list of numbers. Output the largest one.", "Translate the word into French."
    expected = [(base, "3, 9, 2", "9"), (base + "\nThe output should be an integer.", "-1, -5", "-1"),
                ("Write the plural of the word.", "mouse", "mice"), (french, "cat", "chat"),  # null constraints
                (french, "", "rien"),  # "NONE" (any case) is no constraint
                (french + "\n none", "dog", "chien"),  # " none " is compared unstripped, so it is appended
                (french + "\nUse lower case.", "  ", "maison")]
    assert len(records) == len(expected)
    for (prompt, completion), fields in zip(records, expected):
        assert is_templated(prompt, completion, *fields)


def test_oasst1_every_path_to_a_leaf_assistant_skipping_deleted(tmp_path):
    records = run("oasst1", tmp_path)
    assert [r["id"] for r in records] == [f"oasst1_{i}" for i in range(len(records))]
    q, whiskers, unusual = "What is a good name for a cat?", "Whiskers is a classic name.", "Something more unusual?"
    primes = "Name a prime number."
    assert [r["messages"] for r in records] == [
        chat(q, whiskers, unusual, "How about Pixel or Nebula?"),
        chat(q, whiskers, unusual, "Try Archimedes."),
        chat(q, "Luna is a popular choice."),
        chat("Explain photosynthesis in one sentence.", "Plants turn light, water and CO2 into sugar and oxygen."),
        chat("Explain photosynthesis in one sentence.", "It is how plants make food from sunlight."),
        chat(primes, "Two."),
        chat(primes, "Seven.", "Another?", "Eleven."),
        chat(primes, "Seven.", "Another?", "Thirteen."),
        chat(primes, "Five."),
    ]  # inner assistant turns end no conversation; deleted subtrees are gone; "Three." only has a deleted reply


def test_oasst1_top_k_follows_quality(tmp_path):
    top1 = [r["messages"][-1]["content"] for r in run("oasst1", tmp_path, top_k=1)]
    # without quality labels (trees 1-3) the first reply is kept; tree 4: Seven (0.8, before Three) → Thirteen
    assert top1 == ["How about Pixel or Nebula?", "Plants turn light, water and CO2 into sugar and oxygen.",
                    "Thirteen."]
    top2 = [r["messages"][-1]["content"] for r in run("oasst1", tmp_path, top_k=2)]
    assert top2[-2:] == ["Thirteen.", "Eleven."]  # best first


def test_sharegpt_roles_and_dropped_conversations(tmp_path):
    records = {r["id"]: r["messages"] for r in run("sharegpt", tmp_path)}  # upstream's split file
    assert records == {
        "sharegpt_abc1_0": chat("Hi! Can you recommend a book?", "Sure: 'The Hobbit' by J.R.R. Tolkien."),
        "sharegpt_abc1_1": chat("Something shorter?", "'The Old Man and the Sea' is short."),
        # kept as they are, as upstream: a leading assistant turn, a trailing user turn, an empty answer
        "sharegpt_abc3_0": [{"role": "assistant", "content": "Hello, how can I help?"}]
        + chat("Caf\u00e9 au lait, s'il vous pla\u00eet.", "Voil\u00e0 \u2615"),
        "sharegpt_def2_0": chat("What is 2+2?", "4", "And 3+3?"),
        "sharegpt_def3_0": chat("Say nothing.", ""),
    }  # abc2 (system turn), def1 (bing turn) and abc4 (no turns) dropped
    parts = run("sharegpt", tmp_path, files=list(rd.SHAREGPT_FILES))
    assert [r["id"] for r in parts] == ["sharegpt_abc1", "sharegpt_abc3", "sharegpt_def2", "sharegpt_def3"]
    (tmp_path / "raw").mkdir()
    shutil.copytree(RAW / "sharegpt", tmp_path / "raw" / "sharegpt")
    (tmp_path / "raw" / "sharegpt" / rd.SHAREGPT_SPLIT_FILE).unlink()
    rd.convert("sharegpt", tmp_path / "raw", tmp_path / "fallback")  # no split file: the two 90k parts
    assert read_records(rd.output_file(tmp_path / "fallback", "sharegpt")) == parts


def test_lima_drops_odd_tail(tmp_path):
    records = {r["id"]: r["messages"] for r in run("lima", tmp_path)}
    assert records["lima_1"] == chat("Write a limerick.", "There once was a cat from Peru...")
    assert records["lima_2"] == chat("Hi", "Hello! How can I help?", "Tell me a fact.", "Octopuses have three hearts.")
    assert records["lima_3"] == [] and len(records) == 4  # an empty conversation is written, as upstream


def test_every_source_has_a_fixture_and_a_converter():
    assert set(rd.CONVERTERS) == {p.name for p in RAW.iterdir() if p.is_dir()}


# --- determinism -------------------------------------------------------------------------------------------

RANDOM_SOURCES = ["super_ni", "cot", "dolly", "code_alpaca"]


def test_same_seed_same_output_different_seed_different_output(tmp_path):
    for name in RANDOM_SOURCES:
        options = {"zero_shot_examples": 3, "few_shot_examples": 2} if name == "cot" else {}
        assert run(name, tmp_path / "a", seed=1, **options) == run(name, tmp_path / "b", seed=1, **options)
    outputs = {seed: run("super_ni", tmp_path / f"s{seed}", seed=seed) for seed in range(6)}
    assert len({json.dumps(v) for v in outputs.values()}) > 1


def test_one_stream_by_default_per_dataset_streams_on_request(tmp_path):
    def run_all(order, out, *flags):
        rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(out), "--seed", "7", "--dataset", *order,
                 "--super_ni_zero_shot_per_task", "3", "--super_ni_few_shot_per_task", "2", *flags])
        return {name: rd.output_file(out, name).read_bytes() for name in order}

    # upstream mode: the stream runs through the sources in order, so the order changes what each draws ...
    forward = run_all(RANDOM_SOURCES, tmp_path / "forward")
    backward = run_all(list(reversed(RANDOM_SOURCES)), tmp_path / "backward")
    assert forward["dolly"] != backward["dolly"]
    # ... and the first source equals a run of it alone
    assert run_all(RANDOM_SOURCES[:1], tmp_path / "alone") == {"super_ni": forward["super_ni"]}
    # per_dataset mode: each source's output depends on the seed and its own name only
    forward = run_all(RANDOM_SOURCES, tmp_path / "pf", "--rng", "per_dataset")
    backward = run_all(list(reversed(RANDOM_SOURCES)), tmp_path / "pb", "--rng", "per_dataset")
    assert forward == backward
    random.seed(123)  # a global RNG touched in between changes nothing
    random.random()
    assert run_all(["dolly"], tmp_path / "again", "--rng", "per_dataset") == {"dolly": forward["dolly"]}


def test_sample_order_draws_what_rng_sample_draws():
    items = [f"x{i}" for i in range(50)]
    for k in (0, 1, 5, 21, 49):
        a, b = random.Random(k), random.Random(k)
        assert [items[i] for i in rd.sample_order(len(items), k, a)] == b.sample(items, k)
        assert a.random() == b.random()  # and leaves the stream in the same state
    rng = random.Random(0)
    state = rng.getstate()
    assert rd.sample_order(5, 5, rng) is None and rd.sample_order(5, None, rng) is None
    assert rng.getstate() == state  # keeping everything draws nothing
    calls = []

    def items_factory():
        calls.append(1)
        return iter(items)

    a, b = random.Random(3), random.Random(3)
    assert list(rd.sampled(items_factory, 7, a)) == b.sample(items, 7) and len(calls) == 2  # count, then collect
    assert list(rd.sampled(items_factory, None, a)) == items


# --- incremental JSON array reader ---------------------------------------------------------------------------

def test_iter_json_array_across_chunk_boundaries(tmp_path):
    items = [{"id": i, "text": "x" * (i * 7), "n": 12345 + i} for i in range(40)] + [7, "tail"]
    path = tmp_path / "arr.json"
    path.write_text(json.dumps(items, indent=1))
    for chunk in (1, 3, 16, 1 << 20):
        assert [obj for _, obj in rd.iter_json_array(path, chunk_chars=chunk)] == items
    (tmp_path / "empty.json").write_text(" [ ] \n")
    assert list(rd.iter_json_array(tmp_path / "empty.json")) == []


# --- malformed raw input -------------------------------------------------------------------------------------

def copy_source(tmp_path: Path, name: str) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(RAW / name, raw / name)
    return raw


def convert_error(raw: Path, name: str, tmp_path: Path, **options) -> str:
    with pytest.raises(rd.RawDataError) as info:
        rd.convert(name, raw, tmp_path / "out", 42, **options)
    assert not rd.output_file(tmp_path / "out", name).exists()  # nothing half-written
    assert not list((tmp_path / "out" / name).glob("*"))
    return str(info.value)


def test_bad_json_line_names_file_and_line(tmp_path):
    raw = copy_source(tmp_path, "dolly")
    path = raw / "dolly" / "databricks-dolly-15k.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    message = convert_error(raw, "dolly", tmp_path)
    assert message.startswith(f"{path}:3: invalid JSON")


def test_missing_field_names_file_and_record(tmp_path):
    raw = copy_source(tmp_path, "stanford_alpaca")
    path = raw / "stanford_alpaca" / "alpaca_data.json"
    data = json.loads(path.read_text())
    del data[1]["output"]
    path.write_text(json.dumps(data))
    assert convert_error(raw, "stanford_alpaca", tmp_path) == f"{path}[1]: missing field 'output'"


def test_wrong_type_and_unknown_sender(tmp_path):
    raw = copy_source(tmp_path, "sharegpt")
    path = raw / "sharegpt" / rd.SHAREGPT_SPLIT_FILE
    data = json.loads(path.read_text())
    data[1]["conversations"][1]["from"] = "robot"
    path.write_text(json.dumps(data))
    assert convert_error(raw, "sharegpt", tmp_path) == f"{path}[1] conversations[1]: unknown sender 'robot'"
    data[1]["conversations"] = "not a list"
    path.write_text(json.dumps(data))
    assert convert_error(raw, "sharegpt", tmp_path) == f"{path}[1]: field 'conversations' should be list, got str"


def test_broken_json_array_and_missing_files(tmp_path):
    raw = copy_source(tmp_path, "code_alpaca")
    path = raw / "code_alpaca" / "code_alpaca_20k.json"
    path.write_text('[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c",, }]')
    assert convert_error(raw, "code_alpaca", tmp_path).startswith(f"{path}[1]: invalid JSON")
    path.write_text('{"instruction": "a"}')
    assert "expected a JSON array" in convert_error(raw, "code_alpaca", tmp_path)
    path.unlink()
    assert convert_error(raw, "code_alpaca", tmp_path).startswith(f"{path}: raw file not found")
    with pytest.raises(rd.RawDataError, match="raw folder of 'lima' not found"):
        rd.convert("lima", raw, tmp_path / "out")


def test_super_ni_and_oasst1_errors_name_the_record(tmp_path):
    raw = copy_source(tmp_path, "super_ni")
    task = raw / "super_ni" / "tasks" / "task002_sentiment_classification.json"
    data = json.loads(task.read_text())
    data["Instances"][1]["output"] = "positive"
    task.write_text(json.dumps(data))
    assert convert_error(raw, "super_ni", tmp_path, **SMALL_SUPER_NI) == \
        f"{task} Instances[1]: field 'output' should be list, got str"
    raw = copy_source(tmp_path / "o", "oasst1")
    trees = raw / "oasst1" / "2023-04-12_oasst_ready.trees.jsonl"
    rows = [json.loads(line) for line in trees.read_text().splitlines()]
    rows[1]["prompt"]["replies"][1]["role"] = "moderator"
    trees.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert convert_error(raw, "oasst1", tmp_path) == \
        f"{trees}:2 prompt replies[1]: unknown role 'moderator' (expected 'prompter' or 'assistant')"


# --- CLI ---------------------------------------------------------------------------------------------------

def test_cli_converts_requested_and_available_sources(tmp_path):
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "one"), "--dataset", "lima", "oasst1",
             "--oasst1_top_k", "1"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["lima", "oasst1"]
    assert len(read_records(rd.output_file(tmp_path / "one", "oasst1"))) == 3
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "all"),
             "--super_ni_zero_shot_per_task", "1", "--super_ni_few_shot_per_task", "1"])
    for name in rd.CONVERTERS:
        assert read_records(rd.output_file(tmp_path / "all", name))
    with pytest.raises(rd.RawDataError, match="raw folder of 'dolly' not found"):
        rd.main(["--raw_data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path), "--dataset", "dolly"])
    bad = subprocess.run([sys.executable, "-m", "open_instruct.reformat_datasets", "--raw_data_dir", str(RAW),
                          "--output_dir", str(tmp_path / "none"), "--dataset", "dolly", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    missing = subprocess.run([sys.executable, "-m", "open_instruct.reformat_datasets", "--raw_data_dir",
                              str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "none"), "--dataset", "lima"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == \
        [f"error: {tmp_path / 'nowhere' / 'lima'}: raw folder of 'lima' not found (run scripts/prepare_train_data.sh)"]
    assert not (tmp_path / "none").exists()


# --- scripts/prepare_train_data.sh ---------------------------------------------------------------------------

SCRIPT = Path(__file__).parent.parent / "scripts" / "prepare_train_data.sh"


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server (no byte ranges, like some hosts) serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run_fetch(tmp_path: Path, *calls: str):
    """Run the script's fetch() function on its own for each "URL DEST" call."""
    body = "\n".join(f"fetch {call}" for call in calls)
    script = f'set -euo pipefail\neval "$(sed -n \'/^fetch() {{/,/^}}/p\' {SCRIPT})"\n{body}\n'
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)


def test_prepare_script_fetch_is_resumable_and_atomic(tmp_path, http_server):
    root, url = http_server
    payload = bytes(range(256)) * 400
    (root / "data.bin").write_bytes(payload)
    (tmp_path / "data.bin.part").write_bytes(payload[:5000])  # left over from an interrupted run
    result = run_fetch(tmp_path, f"{url}/data.bin data.bin")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data.bin").read_bytes() == payload and not (tmp_path / "data.bin.part").exists()
    (root / "data.bin").write_bytes(b"changed upstream")
    assert run_fetch(tmp_path, f"{url}/data.bin data.bin").returncode == 0
    assert (tmp_path / "data.bin").read_bytes() == payload  # a finished file is not fetched again
    failed = run_fetch(tmp_path, f"{url}/missing.json missing.json")
    assert failed.returncode == 1 and "download failed" in failed.stderr
    assert not (tmp_path / "missing.json").exists()


def test_prepare_script_skips_lima_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    result = subprocess.run(["bash", str(SCRIPT), "--datasets", "lima", "--raw_dir", str(tmp_path / "raw")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "skipping LIMA" in result.stdout and "nothing to convert" in result.stderr
    assert result.returncode == 1 and not (tmp_path / "raw" / "lima").exists()
    unknown = subprocess.run(["bash", str(SCRIPT), "--datasets", "nope"], capture_output=True, text=True, cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown dataset 'nope'" in unknown.stderr


def test_prepare_script_converts_in_upstreams_order(tmp_path):
    """Whatever the order of --datasets, one reformat run converts them in upstream's order (one shared stream)."""
    shutil.copytree(RAW, tmp_path / "raw")  # already downloaded: the script only converts
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--datasets", "dolly,super_ni", "--raw_dir", str(tmp_path / "raw"),
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "== converting: super_ni dolly" in result.stdout
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "direct"), "--dataset", "super_ni", "dolly"])
    for name in ("super_ni", "dolly"):
        assert rd.output_file(tmp_path / "out", name).read_bytes() == \
            rd.output_file(tmp_path / "direct", name).read_bytes()
