"""The power pilot's report on fake run folders with real tensorboard event files: per-step statistics, paired
differences, t-intervals, effect sizes, binomial errors and the generated protocol line, against numbers computed
here with the standard library; the archive re-derives the same report; the script's bad-input errors."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import statistics
import subprocess
import sys

import pytest
from test_paper_summarize import make_run

from open_instruct.paper.pilot import write_pilot_report
from open_instruct.paper.stats import t_interval, t_quantile

RANKS = (1, 2, 8)
SEEDS = (1, 2, 3)
STEPS = (25, 50)
TOKENS = 1000
PROBLEMS = 200


def noise(*key) -> float:
    """A fixed draw in [-1, 1] per (metric, rank, seed, step)."""
    return random.Random(repr(key)).uniform(-1, 1)


def loss(r: int, seed: int, step: int) -> float:
    """(Event files hold float32: hence the tolerances below.) Rank helps more at step 50 than at 25; the seed
    shifts every rank alike, plus some rank-seed noise."""
    return 1.0 - 0.01 * math.log2(r) * step / 25 + 0.05 * seed + 0.004 * noise("loss", r, seed, step)


def token_acc(r: int, seed: int, step: int) -> float:  # a fraction, as finetune logs it
    return 0.70 + 0.002 * r + 0.01 * seed + 0.01 * noise("acc", r, seed, step)


def asdiv(r: int, seed: int) -> float:
    return round(PROBLEMS * (0.05 + 0.005 * r + 0.01 * noise("asdiv", r, seed))) / PROBLEMS


def correct_ids(r: int, seed: int) -> set[int]:
    """Which problems a run gets right: as many as its ASDiv EM says, a different draw per run."""
    return set(random.Random(repr(("items", r, seed))).sample(range(PROBLEMS), round(asdiv(r, seed) * PROBLEMS)))


def write_events(folder, values: dict[str, dict[int, float]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for tag, by_step in values.items():
        for step, value in by_step.items():
            writer.add_scalar(tag, value, step)
    writer.close()


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    root = tmp_path_factory.mktemp("pilot") / "grid"
    for r in RANKS:
        for seed in SEEDS:
            run = make_run(root, f"lora_r{r}_sd{seed}",
                           {"method": "lora", "label": "LoRA", "r": r, "lr": 1e-3, "seed": seed},
                           {"trainable_params": 1000 * r, "eval_loss": loss(r, seed, 50), "global_step": 50},
                           {"eval/asdiv": {"accuracy": asdiv(r, seed), "num_examples": PROBLEMS}})
            right = correct_ids(r, seed)
            (run / "eval" / "asdiv" / "predictions.jsonl").write_text("".join(
                json.dumps({"id": f"asdiv_{i}", "correct": i in right}) + "\n" for i in range(PROBLEMS)))
            write_events(run / "finetune", {"eval_loss": {s: loss(r, seed, s) for s in STEPS},
                                            "eval_token_accuracy": {s: token_acc(r, seed, s) for s in STEPS},
                                            "train_loss": {10: 2.0, 20: 1.5}})
    return root


def csv_rows(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def find(rows, **match):
    found = [row for row in rows if all(row[k] == str(v) for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_t_quantile_against_closed_forms():
    for p in (0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-7)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-7)
    assert t_quantile(0.025, 2) == pytest.approx(-t_quantile(0.975, 2))
    assert 1.96 < t_quantile(0.975, 200) < 1.98  # close to the normal's
    single = t_interval([3.0])
    assert single.std is None and single.low is None and not single.excludes_zero


def test_pilot_numbers_against_a_hand_computation(pilot, tmp_path):
    out = tmp_path / "report"
    markdown = write_pilot_report([pilot], out, heldout_tokens=TOKENS)
    assert (out / "pilot.md").read_text() == markdown
    assert (out / "pilot_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = csv_rows(out / "pilot.csv")
    t2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)  # t quantile, 2 degrees of freedom

    # one setting, one step: mean and sample std over seeds; binomial SE of token accuracy with N = TOKENS
    acc = [100 * token_acc(2, s, 25) for s in SEEDS]
    row = find(rows, kind="setting", column="held-out token acc", step=25, name="LoRA r=2")
    assert float(row["mean"]) == pytest.approx(statistics.mean(acc), rel=1e-6)
    assert float(row["std"]) == pytest.approx(statistics.stdev(acc), rel=1e-4)
    p = statistics.mean(acc) / 100
    se = 100 * math.sqrt(p * (1 - p) / TOKENS)
    assert float(row["binomial se"]) == pytest.approx(se, rel=1e-4)
    assert float(row["se / seed std"]) == pytest.approx(se / statistics.stdev(acc), rel=1e-3)

    # one pair, one step: larger − smaller rank, same seed
    diffs = [loss(8, s, 50) - loss(2, s, 50) for s in SEEDS]
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    row = find(rows, kind="pair", column="held-out loss", step=50, name="LoRA r=8 − LoRA r=2")
    assert row["adjacent"] == "True" and row["n"] == "3"
    assert float(row["mean"]) == pytest.approx(mean, rel=1e-4)
    assert float(row["std"]) == pytest.approx(std, rel=1e-3)
    half = t2 * std / math.sqrt(3)
    assert float(row["ci low"]) == pytest.approx(mean - half, rel=1e-3)
    assert float(row["ci high"]) == pytest.approx(mean + half, rel=1e-3)
    assert row["excludes 0"] == str(mean + half < 0 or mean - half > 0)
    assert float(row["effect / paired std"]) == pytest.approx(abs(mean) / std, rel=1e-3)
    pooled = math.sqrt((statistics.variance([loss(8, s, 50) for s in SEEDS])
                        + statistics.variance([loss(2, s, 50) for s in SEEDS])) / 2)
    assert float(row["effect / seed std"]) == pytest.approx(abs(mean) / pooled, rel=1e-3)
    # the extremes pair is there too, and not counted as neighbours
    assert find(rows, kind="pair", column="held-out loss", step=50, name="LoRA r=8 − LoRA r=1")["adjacent"] == "False"

    # ASDiv at the final step only, N = its num_examples
    row = find(rows, kind="setting", column="ASDiv EM", name="LoRA r=8")
    assert row["step"] == "50" and row["trials"] == str(PROBLEMS)
    assert float(row["mean"]) == pytest.approx(statistics.mean(100 * asdiv(8, s) for s in SEEDS))
    assert not [r for r in rows if r["column"] == "ASDiv EM" and r["step"] == "25"]

    # the paired per-problem error of an ASDiv difference, against the seed error of the mean difference
    per_item = [statistics.mean((i in correct_ids(8, s)) - (i in correct_ids(2, s)) for s in SEEDS)
                for i in range(PROBLEMS)]
    row = find(rows, kind="pair", column="ASDiv EM", name="LoRA r=8 − LoRA r=2")
    item_se = 100 * statistics.stdev(per_item) / math.sqrt(PROBLEMS)
    assert float(row["item se"]) == pytest.approx(item_se)
    seed_se = statistics.stdev([100 * (asdiv(8, s) - asdiv(2, s)) for s in SEEDS]) / math.sqrt(len(SEEDS))
    assert float(row["seed se"]) == pytest.approx(seed_se) and float(row["item se / seed se"]) == pytest.approx(
        item_se / seed_se)

    # the protocol ranking: median over neighbouring pairs of |mean| / std of the differences
    def effect(metric, step, small, large):
        d = [metric(large, s, step) - metric(small, s, step) for s in SEEDS]
        return abs(statistics.mean(d)) / statistics.stdev(d)

    scores = {(name, step): statistics.median([effect(metric, step, 1, 2), effect(metric, step, 2, 8)])
              for name, metric in (("held-out loss", loss), ("held-out token acc", token_acc)) for step in STEPS}
    for (name, step), score in scores.items():
        row = find(rows, kind="protocol", column=name, step=step)
        assert float(row["effect / paired std"]) == pytest.approx(score, rel=1e-3)
    best = max(scores, key=scores.get)
    assert f"Largest rank effect per unit of seed noise: **{best[0]} at step {best[1]}**" in markdown
    assert "- runs: 9 (9 complete" in markdown and "| LoRA r=1 | 1,000 |" in markdown


def test_pilot_report_is_rederived_from_its_archive(pilot, tmp_path):
    out = tmp_path / "report"
    first = write_pilot_report([pilot], out, heldout_tokens=TOKENS)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(p.name for p in pilot.iterdir())
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    again = write_pilot_report([out / "runs"], out, heldout_tokens=TOKENS)
    assert again.split("## Per setting")[1] == first.split("## Per setting")[1]


def test_partial_grid_without_pairs_says_so(tmp_path):
    run = make_run(tmp_path / "grid", "lora_r1_sd1", {"method": "lora", "label": "LoRA", "r": 1, "seed": 1},
                   {"trainable_params": 10, "global_step": 25}, {})
    write_events(run / "finetune", {"eval_loss": {25: 1.0}})
    markdown = write_pilot_report([tmp_path / "grid"], tmp_path / "out")
    assert "No protocol can be ranked yet" in markdown
    with pytest.raises(ValueError, match="no runs"):
        (tmp_path / "empty").mkdir()
        write_pilot_report([tmp_path / "empty"], tmp_path / "out2")


@pytest.mark.parametrize("args, message", [(["missing_folder"], "missing_folder"),
                                           (["{grid}", "--heldout_tokens", "0"], "--heldout_tokens")])
def test_cli_errors(tmp_path, args, message):
    (tmp_path / "grid").mkdir()
    args = [a.format(grid=tmp_path / "grid") for a in args]
    proc = subprocess.run([sys.executable, "scripts/pilot_report.py", *args, "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_report(pilot, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "scripts/pilot_report.py", str(pilot), "--output_dir", str(out),
                           "--heldout_tokens", str(TOKENS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (out / "pilot.md").read_text().strip()
    assert {"pilot.md", "pilot.csv", "pilot_steps.png", "runs"} <= {p.name for p in out.iterdir()}
    assert find(csv_rows(out / "pilot.csv"), kind="setting", column="held-out token acc", step=50,
                name="LoRA r=8")["trials"] == str(TOKENS)


def test_each_label_is_a_protocol_of_its_own(tmp_path):
    """Two LoRA recipes (labels) in one pilot: pairs never mix them, and each (label, metric, step) is ranked as its
    own protocol, so the winner names the recipe; here the second recipe's rank effect is four times larger."""
    root = tmp_path / "grid"
    for label, name, gain in (("LoRA", "lora", 0.01), ("LoRA α=2r", "lora2r", 0.04)):
        for r in (1, 8):
            for seed in SEEDS:
                value = 1.0 - gain * math.log2(r) + 0.05 * seed + 0.004 * noise(label, r, seed)
                run = make_run(root, f"{name}_r{r}_sd{seed}",
                               {"method": "lora", "label": label, "r": r, "lr": 1e-3, "seed": seed},
                               {"trainable_params": 1000 * r, "eval_loss": value, "global_step": 50}, {})
                write_events(run / "finetune", {"eval_loss": {50: value}})
    write_pilot_report([root], tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "pilot.csv").read_text())))
    pairs = [row["name"] for row in rows if row["kind"] == "pair"]
    assert len(pairs) == 2 and all(("α=2r" in p.split(" − ")[0]) == ("α=2r" in p.split(" − ")[1]) for p in pairs)
    protocols = {row["name"]: float(row["effect / paired std"]) for row in rows if row["kind"] == "protocol"}
    assert set(protocols) == {"LoRA: held-out loss at step 50", "LoRA α=2r: held-out loss at step 50"}
    assert protocols["LoRA α=2r: held-out loss at step 50"] > protocols["LoRA: held-out loss at step 50"]
    assert "**LoRA α=2r: held-out loss at step 50**" in (tmp_path / "out" / "pilot.md").read_text()


def test_a_decaying_schedule_counts_at_its_final_step_only(tmp_path):
    """A run that decays its learning rate logs mid-run values that are not finished shorter runs: only its last
    step enters the report; a constant-rate run's every logged step does."""
    root = tmp_path / "grid"
    for name, label, schedule in (("lora", "LoRA", "constant"), ("lin", "LoRA, linear decay", "linear")):
        for r in (1, 8):
            for seed in SEEDS:
                run = make_run(root, f"{name}_r{r}_sd{seed}",
                               {"method": "lora", "label": label, "r": r, "lr": 1e-3, "seed": seed,
                                "schedule": schedule},
                               {"trainable_params": 1000 * r, "eval_loss": loss(r, seed, 50), "global_step": 50}, {})
                write_events(run / "finetune", {"eval_loss": {s: loss(r, seed, s) for s in STEPS}})
    write_pilot_report([root], tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "pilot.csv").read_text())))
    steps = {}
    for row in rows:
        if row["kind"] == "setting":
            steps.setdefault(row["name"].split(" r=")[0], set()).add(int(row["step"]))
    assert steps == {"LoRA": set(STEPS), "LoRA, linear decay": {50}}
