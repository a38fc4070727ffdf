"""A real text corpus that ships with every Python: the standard library's own .py sources.

Byte-level tokens (vocab 256) need no tokenizer download, and sorted paths make the bytes the same on
every machine with the same Python version.
"""
from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch


def stdlib_corpus(max_bytes: int) -> bytes:
    """The first `max_bytes` bytes of the standard library's .py files, concatenated in sorted path order.

    Args:
        max_bytes: how many bytes to return at most (must be positive).

    Raises:
        ValueError: when `max_bytes` is not positive.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if {"site-packages", "dist-packages"} & set(path.parts):
            continue
        chunk = path.read_bytes()[: max_bytes - total]
        chunks.append(chunk)
        total += len(chunk)
        if total >= max_bytes:
            break
    return b"".join(chunks)


def batches(data: bytes, batch: int, seq_len: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless (batch, seq_len) int64 token batches at random offsets into `data`, one byte a token.

    Args:
        data: the corpus.
        batch: sequences per batch.
        seq_len: tokens per sequence.
        generator: draws the offsets, so a seeded generator gives a reproducible stream.
    """
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    if len(tokens) <= seq_len:
        raise ValueError(f"corpus of {len(tokens)} bytes is too short for seq_len {seq_len}")
    while True:
        starts = torch.randint(0, len(tokens) - seq_len, (batch,), generator=generator)
        yield torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])
