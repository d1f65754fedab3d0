"""Tokenizer metadata (`tokenizer.*` keys) so llama.cpp tokenises like the source.

A model that came from a GGUF file (directly, or as the base of a pruned
checkpoint) gets that file's `tokenizer.*` keys copied verbatim: they are what
llama.cpp already runs. Otherwise the keys are built from the Hugging Face
tokenizer, which must be GPT-2-style byte-level BPE; the pre-tokenizer is
matched to a name llama.cpp knows (an unknown name makes llama.cpp refuse the
file, a wrong one silently changes tokenisation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf

from toolchain.errors import UserError

from toolchain.gguf_layout import GGUFLayout

# Split regexes of the byte-level BPE families llama.cpp names (from their tokenizer.json).
_SPLIT_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
_SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                 "pad": "padding_token_id"}


def source_gguf(source: dict) -> Path | None:
    """The .gguf file a model (or a pruned checkpoint's base model) was loaded from."""
    if source.get("kind") == "checkpoint":
        source = source.get("base") or {}
    if source.get("kind") != "gguf":
        return None
    path = Path(source["path"])
    if not path.is_file():
        print(f"note: source GGUF {path} is gone; building tokenizer metadata from the "
              "Hugging Face tokenizer instead", file=sys.stderr)
        return None
    return path


def copy_tokenizer_keys(writer: gguf.GGUFWriter, source: GGUFLayout) -> None:
    """Copy every `tokenizer.*` key of the source file with its exact GGUF value types."""
    for key, (vtype, sub, value) in source.fields.items():
        if key.startswith("tokenizer."):
            writer.add_key_value(key, value, vtype, sub_type=sub)


def pre_tokenizer_name(tok_json: dict) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE, or None if unrecognised."""
    pre = tok_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm"  # digits split one by one, then the GPT-2 regex
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return _SPLIT_PRE.get((steps[0].get("pattern") or {}).get("Regex", ""))
    return None


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id with llama.cpp token types; ids the tokenizer lacks become unused pads."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether the HF tokenizer adds `token_id` at the start (first) or end of a text."""
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0 if first else -1] == token_id


def add_hf_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """Build the `tokenizer.*` keys from a Hugging Face fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok_json = json.loads(backend.to_str()) if backend is not None else {}
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError("the GGUF exporter builds tokenizer metadata only for GPT-2-style "
                        "byte-level BPE tokenizers; export from the model's .gguf file instead")
    pre = pre_tokenizer_name(tok_json)
    if pre is None:
        raise UserError(f"pre-tokenizer {json.dumps(tok_json.get('pre_tokenizer'))[:120]} is not "
                        "one llama.cpp knows; export from the model's .gguf file instead")
    tokens, types = _vocab(tokenizer, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind, key in _SPECIAL_KEYS.items():
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            writer.add_uint32(f"tokenizer.ggml.{key}", int(token_id))
    writer.add_add_bos_token(_adds(tokenizer, tokenizer.bos_token_id, first=True))
    writer.add_add_eos_token(_adds(tokenizer, tokenizer.eos_token_id, first=False))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int,
                  source: GGUFLayout | None) -> str:
    """Write the tokenizer keys; returns where they came from ("gguf" or "hf")."""
    if source is not None:
        copy_tokenizer_keys(writer, source)
        return "gguf"
    add_hf_tokenizer(writer, tokenizer, vocab_size)
    return "hf"
