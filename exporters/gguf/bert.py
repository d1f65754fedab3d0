"""llama.cpp's `bert` architecture: sentence encoders as GGUF, checked with llama.cpp's embeddings.

What the file holds (src/models/bert.cpp, docs/DESIGN.md §5 "BERT"):
- global: token_embd, token_types, position_embd, token_embd_norm (LayerNorm weight + bias);
- per layer: attn_q/k/v (+bias), attn_output (+bias), attn_output_norm, ffn_up (+bias), ffn_down
  (+bias), layer_output_norm — post-LN, GELU (llama.cpp's tanh approximation: a model trained with
  erf GELU agrees to about 1e-4 in cosine, which the tolerances allow);
- keys: `bert.attention.layer_norm_epsilon` (required), `bert.attention.causal` = false,
  `bert.pooling_type` (mean / cls / last; llama.cpp has no max pooling), one n_head and n_ff for all
  layers (q and attn_output are n_embd × n_embd: only uniform FFN pruning loads);
- the WordPiece vocabulary in llama.cpp's "phantom space" form (convert_hf_to_gguf's BertModel):
  a word-initial token gets "▁", a continuation loses its "##", special tokens stay as they are.
Verification embeds held-out passages with llama-cpp-python (`embed`, the file's own pooling and
tokenizer) and compares the normalised embeddings with PyTorch's, and the token ids with the HF
tokenizer's.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np

from toolchain.cpus import usable_cpus
from toolchain.embeddings import TorchEncoder
from toolchain.errors import UserError
from toolchain.families import GGUFArch
from toolchain.models import Model
from toolchain.passages import verification_texts
from toolchain.pooling import pooling_of

from ..llamacpp import check_gguf_file
from .quants import QuantSpec
from .tensors import PlannedTensor, _layer_tensors, _loader

POOLING = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "last": gguf.PoolingType.LAST}
GELU = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # llama.cpp runs the tanh approximation
EMBEDDINGS = {"embeddings.word_embeddings": "token_embd", "embeddings.token_type_embeddings": "token_types",
              "embeddings.position_embeddings": "position_embd", "embeddings.LayerNorm": "token_embd_norm"}
LOWERCASE_KEY = "tokenizer.ggml.normalizer.lowercase"  # llama.cpp's BertNormalizer option (default true)
VERIFY_TEXTS = 48


def check_encoder(model: Model) -> None:
    """What llama.cpp's bert graph cannot run, refused before any work (one line)."""
    pooling = pooling_of(model).mode
    if pooling not in POOLING:
        raise UserError(f"llama.cpp's bert architecture pools by {', '.join(POOLING)}, and this model uses "
                        f"{pooling} pooling: export --to onnx (it keeps the model's pooling)")
    act = getattr(model.config, "hidden_act", "gelu")
    if act not in GELU:
        raise UserError(f"llama.cpp's bert architecture runs GELU, and this model uses {act!r}: export --to onnx")
    if getattr(model.config, "position_embedding_type", "absolute") != "absolute":
        raise UserError("llama.cpp's bert architecture has absolute position embeddings only: export --to onnx")


def add_encoder_hparams(writer: gguf.GGUFWriter, model: Model, arch: GGUFArch) -> None:
    """`bert.*` keys: one head count and FFN width for every layer (uniform widths only)."""
    config, w = model.config, model.widths[0]
    writer.add_block_count(model.num_layers)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(w.intermediate_size))
    writer.add_head_count(int(w.num_attention_heads))
    writer.add_layer_norm_eps(float(config.layer_norm_eps))
    writer.add_causal_attention(False)
    writer.add_pooling_type(POOLING[pooling_of(model).mode])


def _phantom(token: str, control: bool) -> str:
    if control:
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def add_wordpiece_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int, type_count: int) -> None:
    """`tokenizer.*` keys for a WordPiece (BERT) tokenizer, as convert_hf_to_gguf writes them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if (spec.get("model") or {}).get("type") != "WordPiece":
        raise UserError("llama.cpp's bert architecture needs a WordPiece tokenizer (BERT's): export --to onnx")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        special = i in added and added[i].special
        tokens.append(_phantom(by_id[i], special) if i in by_id else f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED if i not in by_id else
                     gguf.TokenType.CONTROL if special else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")  # llama.cpp reads no pre-tokenizer for WordPiece
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(int(type_count))
    for token_id, add in ((tokenizer.cls_token_id, writer.add_bos_token_id), (tokenizer.sep_token_id, writer.add_sep_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id), (tokenizer.pad_token_id, writer.add_pad_token_id),
                          (tokenizer.mask_token_id, writer.add_mask_token_id)):
        if token_id is not None:
            add(int(token_id))
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(ids) and ids[0] == tokenizer.cls_token_id)
    writer.add_add_sep_token(bool(ids) and ids[-1] == tokenizer.sep_token_id)
    normalizer = spec.get("normalizer") or {}
    writer.add_bool(LOWERCASE_KEY, bool(normalizer.get("lowercase", True)))


def add_encoder_keys(writer: gguf.GGUFWriter, model: Model, arch: GGUFArch) -> str:
    """Hyper-parameters and tokenizer; returns where the tokenizer came from ("hf")."""
    check_encoder(model)
    add_encoder_hparams(writer, model, arch)
    vocab = model.weights.shape("embeddings.word_embeddings.weight")[0]
    add_wordpiece_tokenizer(writer, model.tokenizer, vocab, int(model.config.type_vocab_size))
    return "hf"


def plan_encoder_tensors(model: Model, arch: GGUFArch) -> Iterator[PlannedTensor]:
    """The embeddings and every layer's tensors, in file order (biases where the model has them)."""
    names = set(model.weights.names())
    for module, gg in EMBEDDINGS.items():
        for kind in ("weight", "bias"):
            hf = f"{module}.{kind}"
            if hf in names:
                yield PlannedTensor(f"{gg}.{kind}", model.weights.shape(hf), _loader(model, hf))
    for i in range(model.num_layers):
        yield from _layer_tensors(model, arch, i, names)


def is_bert_gguf(path: str | Path) -> bool:
    """Whether a file is a GGUF of llama.cpp's bert architecture (header only)."""
    from toolchain.gguf_layout import read_layout

    key = "general.architecture"
    try:
        layout = read_layout(path, keep=lambda k: k == key)
    except (ValueError, struct.error, OSError):
        return False
    return layout.fields.get(key, (None, None, None))[2] == "bert"


def open_embedder(path: str | Path, n_ctx: int, n_threads: int | None = None):
    """A `llama_cpp.Llama` in embedding mode (the file's own pooling), after checking the file."""
    from llama_cpp import Llama

    check_gguf_file(path)
    try:
        return Llama(model_path=str(path), embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                     n_threads=n_threads or usable_cpus(), verbose=False)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"llama.cpp cannot load {path}: {e}") from None


class LlamaEncoder:
    """Sentence embeddings through llama.cpp (toolchain.embeddings.EmbedFn), one text per call:
    llama-cpp-python's unpooled multi-sequence path reads wrong rows (notes §8), pooled is fine."""

    def __init__(self, path: str | Path, n_ctx: int = 512, n_threads: int | None = None):
        self.llm = open_embedder(path, n_ctx, n_threads)

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.array([self.llm.embed(t, truncate=True) for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def close(self) -> None:
        self.llm.close()


def verify_encoder_gguf(model: Model, path: Path, spec: QuantSpec, text: str, n_threads: int | None = None) -> dict:
    """Embedding cosine of llama.cpp to PyTorch on held-out passages, and tokenizer agreement."""
    texts = verification_texts(text, VERIFY_TEXTS)
    torch_enc = TorchEncoder(model)
    enc = LlamaEncoder(path, torch_enc.max_length, n_threads)
    try:
        cos = (enc(texts) * torch_enc(texts)).sum(1)
        ids_llama = [enc.tokenize(t) for t in texts]
    finally:
        enc.close()
    ids_hf = [model.tokenizer(t, truncation=True, max_length=torch_enc.max_length)["input_ids"] for t in texts]
    result = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "texts": len(texts),
              "tokenizer_match": ids_llama == ids_hf}
    failures = []
    if not np.isfinite(cos).all():
        failures.append("llama.cpp produced non-finite embeddings")
    elif not result["mean_cosine"] >= spec.min_embed_cosine:
        failures.append(f"mean embedding cosine {result['mean_cosine']:.5f} < {spec.min_embed_cosine}")
    if not result["tokenizer_match"]:
        failures.append("llama.cpp tokenises the verification passages differently from the HF tokenizer")
    return {**result, "passed": not failures, "failures": failures,
            "tolerance": {"min_mean_cosine": spec.min_embed_cosine}}
