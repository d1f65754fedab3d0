"""Texts for encoders: calibration passages and a held-out retrieval task, from offline text.

An encoder sees sentences and paragraphs, not one long token stream: calibration draws
passages of varied length (docs/DESIGN.md §7), tokenises each with the model's special
tokens, and pads them into one batch with a real-token mask, which every statistic and loss
honours. The retrieval task cuts the held-out text into passages of `2 × half` words; each
passage's first half is a query whose one relevant document is its second half.
"""

from __future__ import annotations

import random

import torch

from .errors import UserError

CALIB_WORDS = (8, 96)  # passage lengths drawn uniformly in this range (words), then cut at seqlen tokens
RETRIEVAL_HALF = 32  # words per query and per document


def words_of(text: str) -> list[str]:
    """The text as whitespace-separated words (layout and line breaks dropped)."""
    return text.split()


def sample_passages(text: str, n: int, seed: int, lengths: tuple[int, int] = CALIB_WORDS) -> list[str]:
    """`n` passages of consecutive words with seeded random starts and lengths."""
    words = words_of(text)
    lo, hi = lengths
    if len(words) < hi:
        raise UserError(f"calibration text has {len(words)} words; encoder calibration needs at least {hi}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        size = rng.randint(lo, hi)
        start = rng.randrange(len(words) - size + 1)
        out.append(" ".join(words[start:start + size]))
    return out


def retrieval_pairs(text: str, half: int = RETRIEVAL_HALF) -> tuple[list[str], list[str]]:
    """(queries, documents): consecutive non-overlapping passages of 2 × `half` words, split in two."""
    words = words_of(text)
    n = len(words) // (2 * half)
    if n < 2:
        raise UserError(f"the held-out text has {len(words)} words: a retrieval test needs at least "
                        f"{4 * half} (two passages of {2 * half})")
    cut = [words[i * 2 * half:(i + 1) * 2 * half] for i in range(n)]
    return [" ".join(p[:half]) for p in cut], [" ".join(p[half:]) for p in cut]


def verification_texts(text: str, n: int) -> list[str]:
    """`n` held-out queries and documents cut to 4..32 words: exporters check their files on these,
    in batches that always hold padding."""
    queries, documents = retrieval_pairs(text)
    mixed = [t for pair in zip(queries, documents) for t in pair]
    return [" ".join(t.split()[: 4 + (7 * i) % 29]) for i, t in enumerate(mixed[:n])]


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / token_type_ids [n, L] (L: the longest, at most `max_length`)."""
    if max_length < 2:
        raise UserError(f"encoder sequences need at least 2 tokens ([CLS] … [SEP]), got {max_length}")
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt",
                    return_token_type_ids=True)
    return {k: enc[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}


def calibration_batch(tokenizer, text: str, samples: int, seqlen: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, real-token mask), both [samples, L], of seeded passages from `text`."""
    enc = tokenize(tokenizer, sample_passages(text, samples, seed), seqlen)
    return enc["input_ids"], enc["attention_mask"]
