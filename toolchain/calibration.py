"""Calibration token batches: [n_samples, seqlen] windows, deterministic per seed.

Sources:
  pydoc (default)  CPython's reference topics — offline, ships with Python.
                   Measured better than self-generated text (docs/DESIGN.md §7).
  self             sequences sampled from the dense model itself (temperature 1).
  FILE.txt / .jsonl  your own text (.jsonl: a `text` field per line).
  a dataset name   e.g. wikitext2, c4 — needs `datasets` and network access.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError
from .perplexity import encode
from .recipe import CalibOptions
from .texts import pydoc_topics_text, read_text_file

DATASETS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "train", "text"),
    "c4": ("allenai/c4", "en", "train", "text"),
}


def _dataset_text(name: str) -> str:
    try:
        import datasets
    except ImportError:
        raise UserError(f"--calib {name} needs the `datasets` package (pip install datasets), "
                        "or pass a local .txt/.jsonl file") from None
    path, config, split, field = DATASETS.get(name, (name, None, "train", "text"))
    try:
        if name == "c4":
            ds = datasets.load_dataset(path, config, split=split, streaming=True)
            return "\n\n".join(r[field] for _, r in zip(range(2000), ds))
        ds = datasets.load_dataset(path, config, split=split)
        return "\n\n".join(ds[field])
    except Exception as e:  # datasets raises many types when offline
        raise UserError(f"cannot load dataset {name!r} ({type(e).__name__}): "
                        "offline? pass a local .txt/.jsonl file or use the default") from None


def source_text(source: str) -> str:
    if source == "pydoc":
        return pydoc_topics_text()
    if Path(source).suffix in (".txt", ".jsonl") or Path(source).exists():
        return read_text_file(source)
    return _dataset_text(source)


def sample_windows(ids: list[int], n_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """n random windows of seqlen tokens (seeded), like GPTQ/Wanda calibration."""
    if len(ids) <= seqlen:
        raise UserError(f"calibration text has {len(ids)} tokens, need more than --calib-seqlen "
                        f"{seqlen}: use a longer text or a shorter --calib-seqlen")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen, (n_samples,), generator=g)
    t = torch.tensor(ids, dtype=torch.long)
    return torch.stack([t[s:s + seqlen] for s in starts.tolist()])


def self_generated(model, tokenizer, n_samples: int, seqlen: int, seed: int,
                   batch_size: int = 16) -> torch.Tensor:
    """Temperature-1 samples from the model, each started from a random vocabulary token."""
    torch.manual_seed(seed)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    out = []
    device = next(model.parameters()).device
    for i in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - i)
        start = torch.randint(0, vocab, (n, 1), generator=g).to(device)
        with torch.no_grad():
            seq = model.generate(start, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=seqlen - 1, min_new_tokens=seqlen - 1,
                                 pad_token_id=tokenizer.eos_token_id)
        out.append(seq[:, :seqlen].cpu())
    return torch.cat(out)


def calibration_tokens(model, opts: CalibOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Calibration ids and their real-token mask: decoders get full windows (mask None), encoders
    padded passages of the same text (toolchain.passages), at most `seqlen` tokens each."""
    if not model.family.encoder:
        return calibration_ids(model, opts), None
    opts.validate()
    if opts.source == "self":
        raise UserError("--calib self samples text from a causal LM; an encoder needs real text "
                        "(the default pydoc, a file or a dataset)")
    from .passages import calibration_batch

    seqlen = min(opts.seqlen, int(model.config.max_position_embeddings))
    return calibration_batch(model.tokenizer, source_text(opts.source), opts.samples, seqlen, opts.seed)


def calibration_ids(model, opts: CalibOptions) -> torch.Tensor:
    """[samples, seqlen] token ids for `model` (a toolchain.models.Model)."""
    opts.validate()
    if opts.source == "self":
        return self_generated(model.module(), model.tokenizer, opts.samples, opts.seqlen, opts.seed)
    return sample_windows(encode(model.tokenizer, source_text(opts.source)), opts.samples, opts.seqlen, opts.seed)
