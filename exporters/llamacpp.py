"""llama-cpp-python runtime helpers: open a GGUF safely and read its logits.

Shared by the GGUF exporter's verification, `liar-eval FILE.gguf` and the
benchmarks, so every number that comes out of llama.cpp is measured the same
way: F32 KV cache (the default F16 cache alone costs ~6e-3 in |Δlogit|),
logits for every position (`logits_all=True`), one window per `reset()`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.cpus import usable_cpus
from toolchain.errors import UserError
from toolchain.perplexity import LogitsFn, perplexity

GGML_TYPE_F32 = 0  # llama.cpp's enum value for an F32 KV cache


def check_gguf_file(path: str | Path) -> None:
    """Reject a missing, truncated or non-GGUF file with one clear line.

    llama.cpp itself may abort the process or only print to stderr on such
    files, so the header, metadata and tensor table are parsed, the tensor
    data extent checked against the file size and the vocabulary checked for
    duplicates (an assertion in llama.cpp's loader) before llama.cpp sees the file.
    """
    from toolchain.gguf_layout import read_layout

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file {path} does not exist")
    tokens = "tokenizer.ggml.tokens"
    try:
        layout = read_layout(path, keep=lambda key: key == tokens)
    except (ValueError, struct.error, OSError, KeyError) as e:
        raise UserError(f"{path} is not a readable GGUF file ({e}); "
                        "re-export it or re-download it") from None
    if not layout.tensors:
        raise UserError(f"{path} holds no tensors: it is not a model file")
    if layout.data_end > layout.file_size:
        raise UserError(f"{path} is truncated ({layout.file_size} bytes, its tensors need "
                        f"{layout.data_end}); re-export it or re-download it")
    vocab = layout.fields.get(tokens, (None, None, None))[2]
    if vocab is not None and len(set(vocab)) != len(vocab):  # llama.cpp aborts the process on these
        raise UserError(f"{path} has duplicate tokens in its vocabulary (a corrupt file?); "
                        "re-export it or re-download it")


def open_llama(path: str | Path, n_ctx: int, n_threads: int | None = None,
               logits_all: bool = True):
    """A `llama_cpp.Llama` with an F32 KV cache, after checking the file."""
    from llama_cpp import Llama

    check_gguf_file(path)
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512),
                     n_threads=n_threads or usable_cpus(), logits_all=logits_all,
                     type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"llama.cpp cannot load {path}: {e}") from None


def llama_logits_fn(llm) -> LogitsFn:
    """Logits of one window of ids (row i predicts token i+1), fresh context each call."""

    def fn(window: Sequence[int]) -> np.ndarray:
        if len(window) > llm.n_ctx():
            raise UserError(f"window of {len(window)} tokens exceeds the context of {llm.n_ctx()}")
        llm.reset()
        llm.eval(list(window))
        return np.array(llm.scores[: len(window)], dtype=np.float32)

    return fn


def llama_tokenize(llm, text: str) -> list[int]:
    """The GGUF's own tokenizer, no BOS and no special-token parsing (as `encode`)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def gguf_perplexity(path: str | Path, text: str, seqlen: int, n_threads: int | None = None,
                    max_windows: int | None = None, progress: bool = False) -> dict:
    """Perplexity of a GGUF file through llama.cpp, tokenised by the file itself.

    Same protocol as the PyTorch path (`toolchain.perplexity.perplexity`), so a
    file needs no Hugging Face tokenizer files next to it to be evaluated.
    """
    llm = open_llama(path, n_ctx=seqlen, n_threads=n_threads)
    try:
        ids = llama_tokenize(llm, text)
        result = perplexity(llama_logits_fn(llm), ids, seqlen, max_windows=max_windows,
                            progress=progress)
    finally:
        llm.close()
    return {**result, "backend": "llama.cpp", "path": str(path)}
