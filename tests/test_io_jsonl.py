"""io_utils.iter_jsonl: the one jsonl reader (plain or gzip), with errors that name the file and line."""

from __future__ import annotations

import gzip

import pytest

from open_instruct.io_utils import iter_jsonl

TEXT = '{"a": 1}\n\n{"a": 2}\n'


def test_plain_and_gzip_read_the_same(tmp_path):
    plain, packed = tmp_path / "x.jsonl", tmp_path / "x.jsonl.gz"
    plain.write_text(TEXT)
    with gzip.open(packed, "wt") as f:
        f.write(TEXT)
    assert [row for _, row in iter_jsonl(packed)] == [row for _, row in iter_jsonl(plain)] == [{"a": 1}, {"a": 2}]
    assert [where for where, _ in iter_jsonl(packed)] == [f"{packed}:1", f"{packed}:3"]


def test_bad_gzip_and_bad_line_name_the_place(tmp_path):
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(TEXT.encode())[:-12])
    with pytest.raises(KeyError, match=f"{truncated}: cannot read"):
        list(iter_jsonl(truncated, error=KeyError))
    not_gzip = tmp_path / "n.jsonl.gz"
    not_gzip.write_text(TEXT)
    with pytest.raises(ValueError, match=f"{not_gzip}: cannot read"):
        list(iter_jsonl(not_gzip))
    bad = tmp_path / "b.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=f"{bad}:2: invalid JSON"):
        list(iter_jsonl(bad))
