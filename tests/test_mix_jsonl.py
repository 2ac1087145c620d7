"""mix_jsonl: N records drawn per source, a fixed shuffled order, one error line for a bad source."""

from __future__ import annotations

import json

import pytest

from open_instruct.cli import run
from open_instruct.data import mix


def write(path, n, tag):
    path.write_text("".join(json.dumps({"id": f"{tag}{i}"}) + "\n" for i in range(n)))
    return str(path)


def test_mix_draws_counts_and_is_deterministic(tmp_path):
    a, b = write(tmp_path / "a.jsonl", 10, "a"), write(tmp_path / "b.jsonl", 50, "b")
    out1, out2, out3 = (tmp_path / f"out{i}.jsonl" for i in range(3))
    for out, seed in ((out1, 0), (out2, 0), (out3, 1)):
        assert mix.main([a, f"{b}:7", "--output", str(out), "--seed", str(seed)]) == 0
    ids = [json.loads(line)["id"] for line in out1.read_text().splitlines()]
    assert sum(i.startswith("a") for i in ids) == 10 and sum(i.startswith("b") for i in ids) == 7
    assert len(set(ids)) == 17 and ids != sorted(ids)
    assert out1.read_text() == out2.read_text() != out3.read_text()


def test_missing_source_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(mix.main, [str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.jsonl" in err[0]
    assert not (tmp_path / "o.jsonl").exists()
