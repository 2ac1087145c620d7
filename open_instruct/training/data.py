"""finetune's data: records -> tokenised, label-masked datasets (through the token cache) -> batches.

Records are open-instruct's ``messages`` jsonl (or ``prompt``/``completion``), read and validated once per process
(`open_instruct.training.inputs`), encoded by `open_instruct.data.encoding` with `datasets.map` and kept on disk by
`open_instruct.training.token_cache`, keyed by the file, the tokenizer and ``--max_seq_length``.
"""

from __future__ import annotations

import datasets
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq

from open_instruct.cli import UsageError
from open_instruct.data.encoding import IGNORE_INDEX, encode_record, has_trainable_tokens
from open_instruct.training import token_cache
from open_instruct.training.args import EVAL_SPLIT_SEED
from open_instruct.training.inputs import read_and_validate_records
from open_instruct.training.length_sampler import LengthGroupedSampler

logger = get_logger(__name__)


def hub_records(name: str, config_name: str | None) -> list[dict]:
    from open_instruct.data.validate import validate_record

    rows = datasets.load_dataset(name, config_name, split="train")
    records = []
    for index, record in enumerate(rows):
        validate_record(record, where=f"{name}:{index}")
        records.append(record)
    return records


def normalise(record: dict) -> dict:
    """Keep only the fields encoding reads, with one schema for both record shapes (Arrow needs one)."""
    messages = record.get("messages")
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages] if messages else None,
        "prompt": record.get("prompt"),
        "completion": record.get("completion"),
    }


def encode_records(records: list[dict], tokenizer, args, name: str) -> datasets.Dataset:
    """Tokenise + mask with `datasets.map`, then drop examples left with no trainable token."""
    raw = datasets.Dataset.from_list([normalise(r) for r in records])
    encoded = raw.map(lambda r: encode_record(r, tokenizer, args.max_seq_length),
                      remove_columns=raw.column_names, num_proc=args.preprocessing_num_workers,
                      desc=f"Tokenizing {name}")
    kept = encoded.filter(has_trainable_tokens, num_proc=args.preprocessing_num_workers,
                          desc=f"Dropping {name} examples without trainable tokens")
    logger.info(f"{name}: {len(kept)} examples, {len(encoded) - len(kept)} dropped (no trainable token "
                f"within {args.max_seq_length} tokens)")
    if len(kept) == 0:
        raise UsageError(f"{name}: no example has a trainable token within --max_seq_length {args.max_seq_length}")
    return kept


def encode_file(path: str, tokenizer, tokenizer_hash: str, args, name: str) -> datasets.Dataset:
    """`encode_records` of a jsonl file, through the on-disk cache (`open_instruct.training.token_cache`)."""
    return token_cache.cached_encode(path, tokenizer_hash, args.max_seq_length,
                                     lambda: encode_records(read_and_validate_records(path), tokenizer, args, name),
                                     overwrite=getattr(args, "overwrite_cache", False))


def load_datasets(args, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Encoded training and held-out sets.

    With --eval_split_size N the held-out set is carved as the authors did: the whole file is encoded, examples
    without a trainable token are dropped, and `train_test_split(test_size=N, seed=42)` splits what is left.
    """
    tokenizer_hash = token_cache.tokenizer_sha256(tokenizer)
    if args.train_file:
        train = encode_file(args.train_file, tokenizer, tokenizer_hash, args, "train")
    else:  # the datasets hub caches downloads itself; its records are encoded afresh
        train = encode_records(hub_records(args.dataset_name, args.dataset_config_name), tokenizer, args, "train")
    eval_ds = encode_file(args.eval_file, tokenizer, tokenizer_hash, args, "eval") if args.eval_file else None
    if args.eval_split_size:
        if args.eval_split_size >= len(train):
            raise UsageError(f"--eval_split_size {args.eval_split_size} leaves no training data "
                             f"({len(train)} examples with a trainable token)")
        split = train.train_test_split(test_size=args.eval_split_size, seed=EVAL_SPLIT_SEED)
        train, eval_ds = split["train"], split["test"]
    return train, eval_ds



def train_dataloader(train_ds, tokenizer, args) -> tuple[DataLoader, LengthGroupedSampler | None]:
    """Shuffled training batches (length-grouped with --group_by_length) padded to the longest, and the length
    sampler, whose epoch the loop sets."""
    collator = collate(tokenizer)
    length_sampler = None
    if args.group_by_length:  # as HF Trainer, megabatches of batches from all accumulation steps
        length_sampler = LengthGroupedSampler([len(ids) for ids in train_ds["input_ids"]],
                                              args.per_device_train_batch_size * args.gradient_accumulation_steps,
                                              seed=args.seed)
        train_dl = DataLoader(train_ds, sampler=length_sampler, batch_size=args.per_device_train_batch_size,
                              collate_fn=collator, generator=torch.Generator().manual_seed(args.seed))
    else:  # (a DataLoader without its own generator would draw from the global RNG, which a resume restores)
        train_dl = DataLoader(train_ds, shuffle=True, batch_size=args.per_device_train_batch_size,
                              collate_fn=collator, generator=torch.Generator().manual_seed(args.seed))
    return train_dl, length_sampler


def collate(tokenizer) -> DataCollatorForSeq2Seq:
    """Pads a batch to its longest example; padded labels are ignored by the loss."""
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)


def eval_dataloader(eval_ds, batch_size: int, collator) -> DataLoader:
    """Held-out batches, shortest examples first: little padding, and `evaluate`'s token-weighted mean does not
    depend on the order."""
    lengths = [len(ids) for ids in eval_ds["input_ids"]]
    return DataLoader(eval_ds, sampler=sorted(range(len(lengths)), key=lengths.__getitem__), batch_size=batch_size,
                      collate_fn=collator)


