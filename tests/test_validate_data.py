"""validate_data: the record rules, file:line error messages, the CLI and the statistics."""

from __future__ import annotations

import json

import pytest

from open_instruct.data.validate import (
    DataValidationError,
    file_stats,
    find_errors,
    iter_validated_jsonl,
    main,
    percentile,
    validate_record,
)


def msgs(*pairs):
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


GOOD = [
    msgs(("user", "hi"), ("assistant", "hello")),
    msgs(("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "bye!")),
    {"dataset": "x", "id": "x_1", **msgs(("user", "q"), ("assistant", "a"))},
    {"prompt": "2+2=", "completion": "4"},
]

BAD = [
    (msgs(("user", "hi"), ("bot", "hello")), "message 1 has role 'bot' (expected system, user or assistant)"),
    (msgs(("user", "hi"), ("assistant", "  ")), "message 1 (assistant) content is empty"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
     "message 0 (user) content should be a string, got int"),
    (msgs(("user", "hi"), ("system", "x"), ("assistant", "a")), "message 1 is a system message"),
    (msgs(("assistant", "a"), ("user", "b"), ("assistant", "c")), "message 0 has role 'assistant' but 'user'"),
    (msgs(("user", "a"), ("user", "b"), ("assistant", "c")), "message 1 has role 'user' but 'assistant'"),
    (msgs(("user", "a"), ("assistant", "b"), ("user", "c")), "the last message should be an assistant turn"),
    (msgs(("system", "s")), "the last message should be an assistant turn"),
    ({"messages": []}, "'messages' should be a non-empty list"),
    ({"messages": "hi"}, "'messages' should be a non-empty list"),
    ({"messages": ["hi"]}, "message 0 should be an object, got str"),
    ({"prompt": "p"}, "'completion' should be a string, got NoneType"),
    ({"prompt": "", "completion": "c"}, "'prompt' is empty"),
    ({"text": "t"}, "record has neither 'messages' nor 'prompt'/'completion' (keys: ['text'])"),
    (["not", "a", "dict"], "a record should be a JSON object, got list"),
]


@pytest.mark.parametrize("record", GOOD)
def test_good_records_pass(record):
    validate_record(record, "f.jsonl:1")


# Records open-instruct's encoder trains on although they are not clean conversations: only --strict refuses them.
STRICT_ONLY = {"content is empty", "is a system message", "but 'user'", "but 'assistant'", "last message",
               "'prompt' is empty"}


def strict_only(expected: str) -> bool:
    return any(part in expected for part in STRICT_ONLY)


@pytest.mark.parametrize("record,expected", BAD)
def test_bad_records_raise_with_location(record, expected):
    with pytest.raises(DataValidationError) as info:
        validate_record(record, "data.jsonl:17", strict=True)
    assert str(info.value).startswith("data.jsonl:17: ")
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("record,expected", BAD)
def test_lenient_rules_are_what_the_encoder_needs(record, expected):
    if strict_only(expected):
        validate_record(record, "data.jsonl:17")  # upstream trains on it, so finetune accepts it
    else:
        with pytest.raises(DataValidationError, match="^data.jsonl:17: "):
            validate_record(record, "data.jsonl:17")


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_iter_validated_jsonl_yields_records_and_names_the_bad_line(tmp_path):
    good = write_lines(tmp_path / "good.jsonl", [json.dumps(r) for r in GOOD] + [""])
    assert list(iter_validated_jsonl(good)) == GOOD
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD[0]), "", json.dumps(BAD[0][0])])
    with pytest.raises(DataValidationError, match=rf"^{bad}:3: message 1 has role 'bot'"):
        list(iter_validated_jsonl(bad))
    broken = write_lines(tmp_path / "broken.jsonl", [json.dumps(GOOD[0]), '{"messages": [}'])
    with pytest.raises(DataValidationError, match=rf"^{broken}:2: invalid JSON \(.* at column 15\)"):
        list(iter_validated_jsonl(broken))


def test_find_errors_keeps_going(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [json.dumps(r) for r in [GOOD[0], BAD[0][0], GOOD[3], BAD[1][0]]])
    valid, errors = find_errors(path, strict=True)
    assert valid == 2 and [e.split(": ")[0] for e in errors] == [f"{path}:2", f"{path}:4"]
    valid, errors = find_errors(path)  # the empty answer of line 4 is trainable (its EOS), as upstream
    assert valid == 3 and [e.split(": ")[0] for e in errors] == [f"{path}:2"]
    many = write_lines(tmp_path / "many.jsonl", [json.dumps(BAD[0][0])] * 30)
    valid, errors = find_errors(many, max_errors=5)
    assert valid == 0 and len(errors) == 6 and errors[-1].endswith("stopped after 5 errors")


def test_cli_exit_status_and_messages(tmp_path, capsys):
    good = write_lines(tmp_path / "good.jsonl", [json.dumps(r) for r in GOOD])
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD[0]), json.dumps(BAD[2][0])])
    assert main([str(good)]) == 0
    assert f"{good}: 4 records OK" in capsys.readouterr().out
    assert main([str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}:2: message 0 (user) content should be a string, got int" in err
    assert main([str(tmp_path / "missing.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err
    odd = write_lines(tmp_path / "odd.jsonl", [json.dumps(BAD[4][0])])  # starts with the assistant: upstream trains
    assert main([str(odd)]) == 0
    assert main([str(odd), "--strict"]) == 1
    assert "message 0 has role 'assistant' but 'user'" in capsys.readouterr().err


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 50) == 7 and percentile([1, 2], 0) == 1


def test_stats_counts_and_token_lengths(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in GOOD])

    class CharTokenizer:  # one token per character plus a BOS, enough to check the arithmetic
        eos_token = "</s>"

        def __call__(self, text, max_length=None, truncation=False):
            return {"input_ids": [0] * (len(text) + 1)}

    stats = file_stats(path)
    assert stats == {"records": 4, "exchanges": 5,
                     "messages_by_role": {"user": 4, "assistant": 4, "system": 1}}
    stats = file_stats(path, CharTokenizer(), max_seq_length=30)
    rendered = ["<|user|>\nhi\n<|assistant|>\nhello</s>",
                "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nhello</s>\n<|user|>\nbye\n<|assistant|>\nbye!</s>",
                "<|user|>\nq\n<|assistant|>\na</s>", "2+2= 4</s>"]
    lengths = sorted(len(text) + 1 for text in rendered)
    assert stats["tokens"] == {"p50": lengths[1], "p90": lengths[3], "p99": lengths[3], "max": lengths[3],
                               "over_30": sum(n > 30 for n in lengths)}


@pytest.mark.slow
def test_stats_cli_with_the_real_tokenizer(tmp_path, capsys, smollm2_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in GOOD])
    assert main([str(path), "--stats", "--tokenizer", str(smollm2_path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == 4 and 0 < stats["tokens"]["p50"] <= stats["tokens"]["max"] < 60
