"""Embedding quality of an encoder, in any backend: cosine to a reference and retrieval recall@k.

Every backend (PyTorch, onnxruntime, llama.cpp) provides one function, texts → [n, h]
L2-normalised sentence embeddings, so they are all measured the same way on the held-out
retrieval task (toolchain.passages.retrieval_pairs): queries and documents are embedded, each
query ranks every document by cosine, recall@k is the fraction of queries whose own document is
among the first k. The cosine to a reference (the dense model) is the mean over all query and
document texts of cos(e_pruned, e_dense) (docs/DESIGN.md §8).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .passages import retrieval_pairs, tokenize
from .pooling import normalize, pool, pooling_of

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> [n, h] float32, L2-normalised rows
KS = (1, 10)
BATCH = 32


class TorchEncoder:
    """Sentence embeddings of a `toolchain.models.Model` encoder in PyTorch (float32, whole module)."""

    def __init__(self, model, max_length: int | None = None, batch_size: int = BATCH):
        self.pooling = pooling_of(model)
        module = model.module()
        self.module = (module if next(module.parameters()).dtype == torch.float32
                       else copy.deepcopy(module).float()).eval()
        self.tokenizer = model.tokenizer
        self.max_length = max_length or self.pooling.max_seq_length or int(model.config.max_position_embeddings)
        self.batch_size = batch_size

    def hidden(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.module(**enc).last_hidden_state

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = tokenize(self.tokenizer, texts[i:i + self.batch_size], self.max_length)
            out.append(normalize(pool(self.hidden(enc), enc["attention_mask"], self.pooling.mode)).numpy())
        return np.concatenate(out).astype(np.float32)


def is_encoder(path: str | None, backend: str) -> bool:
    """Whether `path` is an encoder, read from its description alone (no weights): io.json's kind for
    ONNX, general.architecture for GGUF, the config's model type for a directory."""
    if path is None:
        return False
    p = Path(path)
    if backend == "onnxruntime":
        from exporters.onnx.iospec import model_file, read_io

        return (read_io(model_file(p)) or {}).get("kind") == "encoder"
    if backend == "llama.cpp":
        from exporters.gguf.bert import is_bert_gguf

        return is_bert_gguf(p)
    config = p / "config.json"
    if not config.is_file():
        return False
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        return False
    from .families import SUPPORTED_MODEL_TYPES, family_of

    return model_type in SUPPORTED_MODEL_TYPES and family_of(model_type).encoder


def open_encoder(path: str, backend: str, threads: int | None = None) -> EmbedFn:
    """The sentence-embedding function of an encoder artifact in `backend`."""
    if backend == "onnxruntime":
        from exporters.onnx.encoder import OnnxEncoder

        return OnnxEncoder(path, threads=threads)
    if backend == "llama.cpp":
        from exporters.gguf.bert import LlamaEncoder

        return LlamaEncoder(path, n_threads=threads)
    from .models import open_model

    return TorchEncoder(open_model(path))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, h] embedding matrices (float64)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).astype(np.float64)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).astype(np.float64)
    return (a * b).sum(1)


def recall_at_k(queries: np.ndarray, documents: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Fraction of queries i whose document i ranks among the k most similar documents."""
    scores = queries @ documents.T
    own = scores[np.arange(len(queries)), np.arange(len(queries))][:, None]
    rank = (scores > own).sum(1)  # documents strictly better than the right one
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}


def evaluate(embed: EmbedFn, text: str, reference: EmbedFn | None = None, ks: Sequence[int] = KS) -> dict:
    """Retrieval recall@k on `text`'s query/document halves, and (with a reference) the mean
    cosine of the embeddings to the reference's and the reference's own recall@k."""
    queries, documents = retrieval_pairs(text)
    q, d = embed(queries), embed(documents)
    out: dict = {"pairs": len(queries), **recall_at_k(q, d, ks)}
    if reference is not None:
        rq, rd = reference(queries), reference(documents)
        cos = cosines(np.concatenate([q, d]), np.concatenate([rq, rd]))
        out.update(cosine=float(cos.mean()), cosine_min=float(cos.min()))
        out["reference"] = recall_at_k(rq, rd, ks)
        out.update({f"relative_{k}": out[k] / v if v else None for k, v in out["reference"].items()})
    return out
