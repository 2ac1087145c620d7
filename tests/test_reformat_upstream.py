"""reformat_datasets against upstream open-instruct's converters (d61037f5), run on the same raw files: every
output file must be byte-equal, per source run alone, for a full multi-source run, and for non-default options."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from reference_code import OPEN_INSTRUCT, load_module, requires_reference

from open_instruct.data import convert as rd
from open_instruct.data.templates import TEMPLATES_WITH_INPUT, TEMPLATES_WITHOUT_INPUT

pytestmark = requires_reference
RAW = Path(__file__).parent / "fixtures" / "raw_train"


@pytest.fixture(scope="module")
def upstream():
    return load_module(OPEN_INSTRUCT / "reformat_datasets.py", "upstream_reformat_datasets",
                       {"instruction_encode_templates": OPEN_INSTRUCT / "instruction_encode_templates.py"})


def run_upstream(upstream, raw: Path, out: Path, seed: int, calls: list[tuple[str, dict]]) -> None:
    """What upstream's __main__ does for ``--dataset`` in this order: one random.seed, then each converter."""
    random.seed(seed)
    for name, options in calls:
        getattr(upstream, f"convert_{name}_data")(str(raw / name), str(out / name), **options)


def outputs(out: Path, names) -> dict[str, bytes]:
    return {name: rd.output_file(out, name).read_bytes() for name in names}


def assert_same(ours: dict[str, bytes], theirs: dict[str, bytes]) -> None:
    for name in theirs:
        mine, ref = ours[name].decode().splitlines(), theirs[name].decode().splitlines()
        for i, (a, b) in enumerate(zip(mine, ref)):
            assert json.loads(a) == json.loads(b), f"{name} record {i} differs"
        assert len(mine) == len(ref), f"{name}: {len(mine)} records, upstream {len(ref)}"
        assert ours[name] == theirs[name], f"{name}: same records, different bytes"


def test_templates_are_upstreams(upstream):
    ref = upstream.encode_instruction_example.__globals__
    assert TEMPLATES_WITH_INPUT == ref["encoding_templates_w_input"]
    assert TEMPLATES_WITHOUT_INPUT == ref["encoding_templates_wo_input"]


@pytest.mark.parametrize("name", list(rd.CONVERTERS))
@pytest.mark.parametrize("seed", [42, 7])
def test_each_source_alone_equals_upstream(upstream, tmp_path, name, seed):
    run_upstream(upstream, RAW, tmp_path / "ref", seed, [(name, {})])
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "ours"), "--dataset", name,
             "--seed", str(seed)])
    assert_same(outputs(tmp_path / "ours", [name]), outputs(tmp_path / "ref", [name]))


def test_full_run_shares_one_stream_in_upstreams_order(upstream, tmp_path):
    names = list(rd.CONVERTERS)
    run_upstream(upstream, RAW, tmp_path / "ref", 42, [(name, {}) for name in names])
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "ours")])  # every source, default order
    assert_same(outputs(tmp_path / "ours", names), outputs(tmp_path / "ref", names))
    # a different order consumes the stream differently: the templated sources change
    shuffled = ["code_alpaca", "dolly", "super_ni"]
    run_upstream(upstream, RAW, tmp_path / "ref2", 42, [(name, {}) for name in shuffled])
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "ours2"), "--dataset", *shuffled])
    assert_same(outputs(tmp_path / "ours2", shuffled), outputs(tmp_path / "ref2", shuffled))
    assert outputs(tmp_path / "ours2", ["dolly"]) != outputs(tmp_path / "ours", ["dolly"])


def test_options_equal_upstreams_arguments(upstream, tmp_path):
    """Sampling paths the defaults do not reach on the fixtures: small SuperNI/CoT counts, oasst1 top-k,
    the Chinese GPT-4 Alpaca set, in one run."""
    calls = [("super_ni", {"zero_shot_examples_per_task": 3, "few_shot_examples_per_task": 4, "n_few_shot": 1}),
             ("cot", {"num_zero_shot_examples": 3, "num_few_shot_examples": 2}),
             ("oasst1", {"top_k_reply": 1}),
             ("gpt4_alpaca", {"load_zh": True}),
             ("dolly", {})]
    run_upstream(upstream, RAW, tmp_path / "ref", 3, calls)
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "ours"), "--seed", "3",
             "--dataset", "super_ni", "cot", "oasst1", "gpt4_alpaca", "dolly",
             "--super_ni_zero_shot_per_task", "3", "--super_ni_few_shot_per_task", "4", "--super_ni_n_demos", "1",
             "--cot_zero_shot_examples", "3", "--cot_few_shot_examples", "2", "--oasst1_top_k", "1",
             "--gpt4_alpaca_zh"])
    names = [name for name, _ in calls]
    assert_same(outputs(tmp_path / "ours", names), outputs(tmp_path / "ref", names))


@pytest.mark.parametrize("zero,few", [(0, 3), (3, 0), (0, 0), (100, 2)])
def test_cot_guard_bug_reproduced(upstream, tmp_path, zero, few):
    run_upstream(upstream, RAW, tmp_path / "ref", 42,
                 [("cot", {"num_zero_shot_examples": zero, "num_few_shot_examples": few})])
    rd.main(["--raw_data_dir", str(RAW), "--output_dir", str(tmp_path / "ours"), "--dataset", "cot",
             "--cot_zero_shot_examples", str(zero), "--cot_few_shot_examples", str(few)])
    assert_same(outputs(tmp_path / "ours", ["cot"]), outputs(tmp_path / "ref", ["cot"]))


def synthetic_raw(root: Path, n: int = 300) -> Path:
    """A bigger raw tree in the official layouts, with inputs present, blank and missing-in-effect."""
    r = random.Random(11)
    raw = root / "raw"
    shutil.copytree(RAW / "super_ni", raw / "super_ni")
    records = [{"instruction": f" Task {i}: do the thing. ", "input": r.choice(["", " ", f"data {i}", "\n"]),
                "output": r.choice(["", f" result {i} ", "ok"])} for i in range(n)]
    for name, file in [("stanford_alpaca", "alpaca_data.json"), ("code_alpaca", "code_alpaca_20k.json"),
                       ("gpt4_alpaca", "alpaca_gpt4_data.json")]:
        (raw / name).mkdir(parents=True)
        (raw / name / file).write_text(json.dumps(records[: n - len(name)]))
    (raw / "self_instruct").mkdir()
    (raw / "self_instruct" / "all_instances_82K.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))
    (raw / "cot").mkdir()
    for file in ("cot_zsopt.jsonl", "cot_fsopt.jsonl"):
        lines = [{"inputs": r.choice([f"Q{i}:", f"Q{i}\n", f"Q{i}", f"Q{i}:  "]), "targets": f"A{i}"}
                 for i in range(n)]
        (raw / "cot" / file).write_text("".join(json.dumps(x) + "\n" for x in lines))
    return raw


def test_bigger_sources_with_sampling(upstream, tmp_path):
    raw = synthetic_raw(tmp_path)
    calls = [("super_ni", {"zero_shot_examples_per_task": 10, "few_shot_examples_per_task": 7}),
             ("cot", {"num_zero_shot_examples": 120, "num_few_shot_examples": 250}),
             ("self_instruct", {}), ("stanford_alpaca", {}), ("code_alpaca", {}), ("gpt4_alpaca", {})]
    run_upstream(upstream, raw, tmp_path / "ref", 1234, calls)
    rd.main(["--raw_data_dir", str(raw), "--output_dir", str(tmp_path / "ours"), "--seed", "1234",
             "--super_ni_zero_shot_per_task", "10", "--super_ni_few_shot_per_task", "7",
             "--cot_zero_shot_examples", "120", "--cot_few_shot_examples", "250"])
    names = [name for name, _ in calls]
    assert_same(outputs(tmp_path / "ours", names), outputs(tmp_path / "ref", names))
