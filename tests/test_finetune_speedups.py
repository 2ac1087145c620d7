"""The training-loop speed-ups change nothing but speed: length-grouped sampling, label-only LM head, token cache,
and the authors' held-out split."""

from __future__ import annotations

import argparse
import json

import datasets
import pytest
import torch
from finetune_helpers import byte_tokenizer, load_adapter_tensors, make_tiny_checkpoint, python, run, tiny_args
from helpers.models import make_tiny_llama
from peft import LoraConfig, get_peft_model

from open_instruct.data.encoding import IGNORE_INDEX
from open_instruct.training import data as training_data
from open_instruct.training.label_loss import CausalLMLoss
from open_instruct.training.length_sampler import LengthGroupedSampler, length_grouped_order

# ------------------------------------------------------------------------------------------- sampler


def random_lengths(n=403, seed=0):
    return torch.randint(1, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_length_grouped_order_is_a_permutation_with_little_padding():
    lengths, batch = random_lengths(), 8
    order = length_grouped_order(lengths, batch, torch.Generator().manual_seed(3))
    assert sorted(order) == list(range(len(lengths)))
    assert lengths[order[0]] == max(lengths)  # the longest example comes first

    def padding(indices):
        batches = [indices[i:i + batch] for i in range(0, len(indices), batch)]
        return sum(max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches)

    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(3)).tolist()
    assert padding(order) < padding(shuffled) / 5


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths = random_lengths()
    a, b, other_seed = (LengthGroupedSampler(lengths, 8, seed=s) for s in (1, 1, 2))
    assert list(a) == list(b) and list(a) != list(other_seed)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    b.set_epoch(1)
    assert list(a) == list(b)


def test_group_by_length_resume_gives_the_same_adapter(tmp_path):
    """Stopped after a mid-epoch checkpoint and resumed, a grouped run ends where an uninterrupted one does."""
    model = make_tiny_checkpoint(tmp_path / "model")
    from finetune_helpers import write_toy_data

    data = write_toy_data(tmp_path / "data.jsonl", n=24)
    common = ["--group_by_length", "--checkpointing_steps", "2"]  # 6 steps of 4: one epoch, resumed mid-way
    full = tmp_path / "full"
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(model, data, full, *common)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads((full / "all_results.json").read_text())["global_step"]
    resumed = tmp_path / "resumed"
    (resumed).mkdir()
    import shutil

    shutil.copytree(full / "step_2", resumed / "step_2")  # as if killed right after the first checkpoint
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(model, data, resumed, *common),
                "--resume_from_checkpoint", "auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and steps > 2
    expected, actual = load_adapter_tensors(full), load_adapter_tensors(resumed)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


# -------------------------------------------------------------------------------------- label-only loss


def labelled_batch(vocab_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (3, 17), generator=generator)
    labels = ids.clone()
    labels[0, :9] = IGNORE_INDEX  # prompt
    labels[1, :4] = IGNORE_INDEX
    labels[1, 12:] = IGNORE_INDEX  # padding
    labels[2, :15] = IGNORE_INDEX
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 12:] = 0
    return {"input_ids": ids, "attention_mask": attention_mask, "labels": labels}


def loss_and_grads(model, loss):
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("wrap", ["full", "lora", "lora_checkpointing"])
def test_label_only_loss_and_gradients_equal_the_full_computation(wrap):
    model = make_tiny_llama(vocab_size=128, seed=1)
    if wrap != "full":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    if wrap == "lora_checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()  # dropout is 0 in the tiny config, so both passes see the same function
    batch = labelled_batch(128)
    label_only = CausalLMLoss(model)
    assert label_only.label_only
    loss, grads = loss_and_grads(model, label_only(model, batch))
    full_loss, full_grads = loss_and_grads(model, CausalLMLoss(model, label_only=False)(model, batch))
    assert label_only.label_only  # no fall-back happened
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == full_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_label_only_loss_falls_back_for_a_forward_without_logits_to_keep():
    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    inner = make_tiny_llama(vocab_size=128, seed=1)
    plain = Plain(inner)
    plain.inner = inner
    loss_fn = CausalLMLoss(torch.nn.Module())  # a module with a bare forward: nothing to slice with
    assert not loss_fn.label_only
    batch = labelled_batch(128)
    torch.testing.assert_close(loss_fn(plain, batch), inner(**batch).loss)



def test_held_out_evaluation_counts_loss_and_greedy_hits_over_labelled_tokens():
    """``evaluate`` = token-weighted loss and next-token accuracy over every labelled position of every batch,
    checked against the full logits of the plain forward."""
    from accelerate import Accelerator

    from open_instruct.training.loop import evaluate

    model = make_tiny_llama(vocab_size=128, seed=2)
    batches = [labelled_batch(128, seed=s) for s in (0, 1)]
    metrics = evaluate(model, batches, Accelerator(cpu=True), CausalLMLoss(model))
    loss_sum = hits = count = 0.0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE_INDEX
            loss_sum += torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
            hits += (logits[keep].argmax(-1) == targets[keep]).sum().item()
            count += keep.sum().item()
    assert metrics["eval_loss"] == pytest.approx(loss_sum / count, rel=1e-5)
    assert metrics["eval_token_accuracy"] == pytest.approx(hits / count, abs=1e-9)
    assert metrics["eval_tokens"] == count
    assert 0 < count and model.training  # evaluate leaves the model in training mode

# ------------------------------------------------------------------------------------ token cache & split


def data_args(**overrides):
    values = dict(max_seq_length=64, preprocessing_num_workers=None, train_file=None, dataset_name=None,
                  dataset_config_name=None, eval_file=None, eval_split_size=0, overwrite_cache=False)
    values.update(overrides)
    return argparse.Namespace(**values)


def write_records(path, n, long_prompt_every=5):
    rows = []
    for i in range(n):
        prompt = ("long " * 40 if i % long_prompt_every == 0 else "") + f"what is {i}+1?"
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(i + 1)}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    from accelerate import PartialState

    PartialState()  # finetune logs through accelerate
    monkeypatch.setenv("PROLORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokenized"


def test_token_cache_is_reused_and_invalidated(tmp_path, cache_root):
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    data = write_records(tmp_path / "train.jsonl", 12)
    args = data_args(train_file=str(data))
    first, _ = training_data.load_datasets(args, tokenizer)
    entries = list(cache_root.iterdir())
    assert len(entries) == 1
    fresh = training_data.encode_records(training_data.read_and_validate_records(str(data)), tokenizer, args, "train")
    assert first["input_ids"] == fresh["input_ids"] and first["labels"] == fresh["labels"]

    calls = []
    original = training_data.encode_records

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    training_data.encode_records = counting
    try:
        again, _ = training_data.load_datasets(args, tokenizer)
        assert not calls and again["input_ids"] == first["input_ids"]  # served from the cache
        training_data.load_datasets(data_args(train_file=str(data), overwrite_cache=True), tokenizer)
        assert len(calls) == 1  # --overwrite_cache re-encodes
        training_data.load_datasets(data_args(train_file=str(data), max_seq_length=80), tokenizer)
        other = byte_tokenizer()
        other.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<x>"]})
        training_data.load_datasets(args, other)
        write_records(data, 13)
        training_data.load_datasets(args, tokenizer)
        assert len(calls) == 4  # new length, new tokenizer, new file content: each a new entry
    finally:
        training_data.encode_records = original
    assert len(list(cache_root.iterdir())) == 4
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")]  # no half-written entries


def test_held_out_split_is_taken_after_dropping_untrainable_examples(tmp_path, cache_root):
    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    data = write_records(tmp_path / "train.jsonl", 40)  # every 5th prompt fills max_seq_length: dropped
    args = data_args(train_file=str(data), eval_split_size=6)
    train, held_out = training_data.load_datasets(args, tokenizer)
    records = training_data.read_and_validate_records(str(data))
    kept = training_data.encode_records(records, tokenizer, data_args(), "all")
    assert len(kept) == 32
    expected = datasets.Dataset.train_test_split(kept, test_size=6, seed=42)
    assert held_out["input_ids"] == expected["test"]["input_ids"]
    assert train["input_ids"] == expected["train"]["input_ids"]
    assert len(train) == 26


def test_held_out_batches_are_length_sorted_and_complete():
    from datasets import Dataset

    from open_instruct.training.data import eval_dataloader

    lengths = [5, 1, 9, 3, 3, 7, 2]
    dataset = Dataset.from_dict({"input_ids": [list(range(n)) for n in lengths], "row": list(range(len(lengths)))})
    batches = list(eval_dataloader(dataset, 3, lambda rows: rows))
    assert [len(b) for b in batches] == [3, 3, 1]
    seen = [row["row"] for b in batches for row in b]
    assert sorted(seen) == list(range(len(lengths)))  # every example once
    assert [lengths[i] for i in seen] == sorted(lengths)
