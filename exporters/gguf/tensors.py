"""The model's weights as GGUF tensors: llama.cpp names, layout and rope order.

HF Llama checkpoints rotate the two halves of each head; llama.cpp's rope
rotates adjacent pairs. convert_hf_to_gguf.py (`LlamaModel.permute`)
reorders the rows of q_proj and k_proj per head to match; here each layer is
permuted with its *own* kept head count, because pruned layers differ.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .hparams import llama3_rope_factors, rope_parameters

_LINEARS = (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"))
_ROPE_ROWS = ("attn_q", "attn_k")


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of one q/k projection (or its bias) from HF half-split to llama.cpp pair order."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().contiguous().numpy()


def embeddings_tied(model) -> bool:
    """True when the LM head is the token embedding (then no output.weight is written)."""
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    return head is emb or (head.shape == emb.shape and torch.equal(head, emb))


def model_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """(gguf name, float32 array) for every tensor llama.cpp consumes, nothing more.

    llama.cpp refuses a file with tensors it does not use, so only parameters
    that exist (biases included) are yielded.
    """
    config = model.config
    head_dim = model.model.layers[0].self_attn.head_dim
    yield "token_embd.weight", _np(model.model.embed_tokens.weight)
    params = rope_parameters(config)
    if params.get("rope_type") == "llama3":
        yield "rope_freqs.weight", np.asarray(llama3_rope_factors(params, head_dim), dtype=np.float32)
    for i, layer in enumerate(model.model.layers):
        yield f"blk.{i}.attn_norm.weight", _np(layer.input_layernorm.weight)
        yield f"blk.{i}.ffn_norm.weight", _np(layer.post_attention_layernorm.weight)
        for path, name in _LINEARS:
            lin = layer.get_submodule(path)
            for kind in ("weight", "bias"):
                p = getattr(lin, kind)
                if p is None:
                    continue
                arr = _np(p)
                if name in _ROPE_ROWS:
                    arr = rope_permute(arr, lin.out_features // head_dim)
                yield f"blk.{i}.{name}.{kind}", arr
    yield "output_norm.weight", _np(model.model.norm.weight)
    if not embeddings_tied(model):
        yield "output.weight", _np(model.lm_head.weight)
