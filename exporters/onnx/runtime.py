"""Run an exported decoder in onnxruntime: full windows, prefill + KV-cache
decode, greedy generation. Used by verification, `liar-eval` and the benchmarks.

The KV layout (layers, per-layer KV heads, head size) is read from the graph's
own inputs and cross-checked with `io.json` when there is one, so a file that
does not match its description is refused instead of producing garbage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.cpus import usable_cpus
from toolchain.errors import UserError
from toolchain.perplexity import LogitsFn

from .iospec import TOKEN_INPUTS, model_file, past_names, read_io

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


@dataclass
class KVCache:
    """One sequence's cache after `length` tokens: present tensors in layer order."""

    past: list[np.ndarray]
    length: int


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """None -> CPU; "auto" -> CUDA first when this onnxruntime build has it; a list as given."""
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    if providers == "auto":
        have = ort.get_available_providers()
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
    if isinstance(providers, str):
        return [providers]
    return list(providers)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class OnnxDecoder:
    """An onnxruntime session over a decoder with inputs `input_ids`, `attention_mask`,
    `position_ids`, `past_key_values.N.key/value` and outputs `logits`, `present.N.*`."""

    def __init__(self, path: str | Path, providers: str | Sequence[str] | None = None,
                 threads: int | None = None):
        import onnxruntime as ort

        self.path = model_file(path)
        self.io = read_io(self.path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads or usable_cpus()), 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=resolve_providers(providers))
        except Exception as e:  # onnxruntime raises its own pybind error types
            raise UserError(f"onnxruntime cannot load {self.path}: {_first_line(e)} "
                            "(corrupt or truncated file? re-export it)") from None
        self.providers = self.session.get_providers()
        self._read_layout()

    def _read_layout(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in TOKEN_INPUTS if n not in inputs]
        past = {m.groups(): i for n, i in inputs.items() if (m := _PAST_RE.match(n))}
        L = len(past) // 2
        if missing or not L or any(past_names(i)[0] not in inputs or past_names(i)[1] not in inputs
                                   for i in range(L)):
            raise UserError(f"{self.path} is not a decoder with KV cache: inputs must be "
                            f"{', '.join(TOKEN_INPUTS)} and past_key_values.N.key/value "
                            f"(got {', '.join(list(inputs)[:6])}...)")
        shapes = [inputs[past_names(i)[0]].shape for i in range(L)]
        if any(len(s) != 4 or not isinstance(s[1], int) or not isinstance(s[3], int) for s in shapes):
            raise UserError(f"{self.path}: past_key_values inputs must be [batch, kv_heads, past, head_dim] "
                            "with static kv_heads and head_dim")
        self.num_layers = L
        self.kv_heads = [int(s[1]) for s in shapes]
        self.head_dim = int(shapes[0][3])
        self.dtype = _NP_TYPES.get(inputs[past_names(0)[0]].type, np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.output_names[0] != "logits" or len(self.output_names) != 1 + 2 * L:
            raise UserError(f"{self.path}: outputs must be logits and present.N.key/value for {L} layers")
        if self.io is not None:
            want = [int(layer["num_key_value_heads"]) for layer in self.io["layers"]]
            if want != self.kv_heads or int(self.io.get("head_dim", self.head_dim)) != self.head_dim:
                raise UserError(f"{self.path}: io.json describes KV heads {want} but the graph has "
                                f"{self.kv_heads}: the files do not belong together, re-export")

    # -- raw graph call -------------------------------------------------------------

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros((batch, h, 0, self.head_dim), self.dtype) for h in self.kv_heads for _ in (0, 1)]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                position_ids: np.ndarray | None = None,
                past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One graph call on a batch. `attention_mask` covers past + new tokens (1 = real);
        default positions count real tokens, so left padding works."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        b, s = ids.shape
        past = past if past is not None else self.empty_past(b)
        p = past[0].shape[2]
        mask = (np.ones((b, p + s), np.int64) if attention_mask is None
                else np.asarray(attention_mask, dtype=np.int64))
        if position_ids is None:
            position_ids = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, p:]
        feed = {"input_ids": ids, "attention_mask": mask,
                "position_ids": np.asarray(position_ids, dtype=np.int64)}
        for i in range(self.num_layers):
            k, v = past_names(i)
            feed[k], feed[v] = past[2 * i], past[2 * i + 1]
        out = self.session.run(self.output_names, feed)
        return out[0], out[1:]

    # -- single sequence helpers ------------------------------------------------------

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """[n, vocab] float32 logits of one window (no cache)."""
        return self.forward(np.asarray([list(ids)]))[0][0].astype(np.float32)

    def logits_fn(self) -> LogitsFn:
        """For toolchain.perplexity.perplexity."""
        return self.logits

    def prefill(self, ids: Sequence[int]) -> tuple[np.ndarray, KVCache]:
        """Logits [n, vocab] of the prompt and the cache after it."""
        logits, present = self.forward(np.asarray([list(ids)]))
        return logits[0], KVCache(present, len(ids))

    def decode(self, token: int, cache: KVCache) -> tuple[np.ndarray, KVCache]:
        """Logits [vocab] of one new token fed through present -> past."""
        logits, present = self.forward(np.asarray([[int(token)]]),
                                       np.ones((1, cache.length + 1), np.int64),
                                       np.asarray([[cache.length]]), cache.past)
        return logits[0, -1], KVCache(present, cache.length + 1)

    def generate(self, ids: Sequence[int], max_new_tokens: int,
                 eos_token_id: int | None = None) -> list[int]:
        """Greedy continuation with the KV cache (the new tokens only)."""
        if not ids:
            raise UserError("generation needs at least one prompt token")
        logits, cache = self.prefill(ids)
        nxt, out = int(np.argmax(logits[-1])), []
        while len(out) < max_new_tokens:
            out.append(nxt)
            if nxt == eos_token_id or len(out) == max_new_tokens:
                break
            step, cache = self.decode(nxt, cache)
            nxt = int(np.argmax(step))
        return out
