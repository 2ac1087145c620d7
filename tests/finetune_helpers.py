"""Small on-disk fixtures for the fine-tune / merge tests: a tiny Llama with a byte-level tokenizer, toy data.

The tokenizer maps every byte to one token (256 ids) plus `<s>` and `</s>`, adds `<s>` in front like Llama's,
and has no pad token, so finetune's pad-token + embedding-resize path is exercised too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.models import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 258  # 256 bytes + <s> + </s>


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(["<s>", "</s>"])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                        special_tokens=[("<s>", vocab_size_of(core) - 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")


def vocab_size_of(core) -> int:
    return core.get_vocab_size(with_added_tokens=True)


def make_tiny_checkpoint(path: Path, seed: int = 0, **model_kwargs) -> Path:
    """Save a random tiny Llama (vocab matching `byte_tokenizer`) and the tokenizer to `path`."""
    model = make_tiny_llama(vocab_size=VOCAB_SIZE, seed=seed, **model_kwargs)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def write_toy_data(path: Path, n: int = 24, seed: int = 0) -> Path:
    """`n` short addition conversations in open-instruct's messages format (some with a system turn)."""
    rows = []
    for i in range(n):
        a, b = (i * 7 + seed) % 10, (i * 3 + 1) % 10
        messages = [{"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "content": f"{a + b}"}]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": "add"})
        rows.append({"dataset": "toy", "id": f"toy_{i}", "messages": messages})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_args(model_dir: Path, train_file: Path, output_dir: Path, *extra: str) -> list[str]:
    """finetune CLI arguments for a few fast steps on the tiny model."""
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train_file), "--output_dir", str(output_dir),
            "--use_lora", "--lora_rank", "4", "--lora_alpha", "8", "--lora_dropout", "0.1",
            "--max_seq_length", "48", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
            "--max_train_steps", "6", "--logging_steps", "1", "--seed", "3", *extra]


def run(cmd: list[str], timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repo root with a single CPU thread, failing loudly with its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}", **kwargs.pop("env", {})}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
    return proc


def python() -> str:
    return sys.executable


def load_adapter_tensors(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "adapter_model.safetensors"))
