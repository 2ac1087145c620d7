"""On-disk cache of tokenised training files, shared by every run (and grid cell) that would encode them alike.

An encoded file is stored with ``datasets.Dataset.save_to_disk`` under
``$PROLORA_CACHE/tokenized/<key>`` (default ``~/.cache/prolora/tokenized``), where the key hashes everything the
encoding depends on: the bytes of the data file, the files of the tokenizer as it is used (saved to a temporary
folder, so an added pad token counts), ``max_seq_length`` and `ENCODING_VERSION`. Change any of them and the key
changes; bump `ENCODING_VERSION` whenever `open_instruct.data.encoding` or the dropping rule changes what comes out.
Entries are written under a temporary name and renamed when complete, so concurrent runs never read half a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import datasets

from open_instruct.io_utils import atomic_dir
from open_instruct.offline_assets import cache_dir

logger = logging.getLogger(__name__)

ENCODING_VERSION = 1


def file_sha256(path: str | os.PathLike, digest=None) -> str:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """Hash of the files `tokenizer.save_pretrained` writes (vocabulary, merges, special and added tokens).

    A fast tokenizer's ``tokenizer.json`` also records the truncation/padding of its last call, which says
    nothing about how it encodes: those two entries are left out.
    """
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            digest.update(path.name.encode())
            if path.name == "tokenizer.json":
                spec = json.loads(path.read_text(encoding="utf-8"))
                spec.pop("truncation", None)
                spec.pop("padding", None)
                digest.update(json.dumps(spec, sort_keys=True).encode())
            else:
                file_sha256(path, digest)
    return digest.hexdigest()


def cache_key(data_file: str | os.PathLike, tokenizer_hash: str, max_seq_length: int) -> str:
    digest = hashlib.sha256(f"v{ENCODING_VERSION}|{max_seq_length}|{tokenizer_hash}|".encode())
    file_sha256(data_file, digest)
    return digest.hexdigest()[:32]


def tokenized_cache_dir() -> Path:
    return cache_dir() / "tokenized"


def cached_encode(data_file: str | os.PathLike, tokenizer_hash: str, max_seq_length: int,
                  encode: Callable[[], datasets.Dataset], overwrite: bool = False,
                  root: Path | None = None) -> datasets.Dataset:
    """The encoded dataset of `data_file`: loaded from the cache, or built by `encode()` and stored."""
    path = (root or tokenized_cache_dir()) / cache_key(data_file, tokenizer_hash, max_seq_length)
    if path.is_dir() and not overwrite:
        logger.info(f"{data_file}: tokenised examples from the cache {path}")
        return datasets.load_from_disk(str(path))
    dataset = encode()
    with atomic_dir(path) as tmp:
        dataset.save_to_disk(str(tmp))
    logger.info(f"{data_file}: tokenised examples cached in {path}")
    return datasets.load_from_disk(str(path))
