"""`liar-eval MODEL --tasks T1,T2`: lm-evaluation-harness's own tasks and metrics on liar-export
checkpoints, HF models and GGUF files (docs/DESIGN.md §9).

PyTorch models go through lm-eval's HF class (`HFLM`) given the model `open_model` reads, so
checkpoints, HF directories, hub ids and dequantised GGUFs are all evaluated by the code lm-eval
uses for hub models. A `.gguf` goes through `LlamaCppLM`, an lm-eval `TemplateLM` over llama.cpp
in this process: lm-eval tokenises and splits context / continuation, and the log-likelihoods
are read from the logits of every position (F32 KV cache), as GGUF verification reads them.
lm-eval's own `gguf` client was tried and cannot be used: it scores the log-probabilities a
server echoes for the prompt, which llama-cpp-python 0.3.36's server shifts by one token
(each token gets the log-probability of the *next* one; abetlen/llama-cpp-python#1983, measured
here: "If your program" → -10.4 / -12.9 where the logits give -8.3 / -6.9) and llama.cpp's own
server does not return at all (ggml-org/llama.cpp#27174).

Offline, the bundled task `liar_legal_mc` works everywhere: which of four continuations of a
sentence from the bundled legal prose (toolchain/data/heldout_legal.txt: GPL-3, Apache-2.0,
MPL-2.0, never calibration text) is the real one. Its items are derived from that file
deterministically and written, with the task YAML, into a temporary directory handed to
lm-eval's TaskManager; their SHA-256 is reported as the task's revision. With a hub cache
present, lm-eval's standard tasks (piqa, hellaswag, arc_easy, ...) run unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError

BUNDLED_TASK = "liar_legal_mc"
BUNDLED_ITEMS = 150
CHOICES = 4
CONTEXT = 2048  # tokens llama.cpp holds per request (lm-eval truncates longer requests from the left)
INSTALL_HINT = "pip install 'liar-export[lmeval]'"

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


# -- the bundled task --------------------------------------------------------------------

def legal_items(n: int = BUNDLED_ITEMS, seed: int = 0) -> list[dict]:
    """Multiple-choice items from the bundled legal prose: a sentence's first half as context, its
    real second half and the second halves of three other sentences as choices (same seed, same items)."""
    from .texts import heldout_text

    text = re.sub(r"\s+", " ", heldout_text())
    sentences = [s.split() for s in re.split(r"(?<=[.;:])\s+(?=[A-Z(])", text)]
    sentences = [s for s in sentences if 10 <= len(s) <= 60 and re.search(r"[a-z]{3}", " ".join(s))]
    rng = random.Random(seed)
    picked = rng.sample(range(len(sentences)), min(n, len(sentences)))
    halves = [(s[:len(s) // 2], s[len(s) // 2:]) for s in sentences]
    items = []
    for i in picked:
        context, real = halves[i]
        others = rng.sample([j for j in range(len(halves)) if j != i and halves[j][1] != real], CHOICES - 1)
        choices = [" ".join(real)] + [" ".join(halves[j][1]) for j in others]
        order = list(range(CHOICES))
        rng.shuffle(order)
        items.append({"context": " ".join(context), "choices": [choices[k] for k in order],
                      "label": order.index(0)})
    return items


def write_bundled_task(directory: Path) -> str:
    """The bundled task's YAML and items in `directory`; returns the items' SHA-256."""
    data = "".join(json.dumps(item) + "\n" for item in legal_items())
    (directory / f"{BUNDLED_TASK}.jsonl").write_text(data)
    (directory / f"{BUNDLED_TASK}.yaml").write_text(
        _TASK_YAML.format(name=BUNDLED_TASK, data=json.dumps(str(directory / f"{BUNDLED_TASK}.jsonl"))))
    return hashlib.sha256(data.encode()).hexdigest()


# -- evaluation --------------------------------------------------------------------------

def parse_tasks(spec: str) -> list[str]:
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    if not tasks:
        raise UserError(f"--tasks needs task names separated by commas (got {spec!r}); the bundled offline "
                        f"task is {BUNDLED_TASK}")
    return tasks


def evaluate(model: str | None, tasks: list[str], limit: int | None, backend: str,
             threads: int | None = None, batch_size: int = 8) -> dict:
    """lm-eval's results for `tasks`: per task the metric keys lm-eval reports, with the lm-eval
    version, the model's revision and the bundled task's revision."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be ≥ 1 (got {limit})")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(f"liar-eval --tasks needs lm-evaluation-harness: {INSTALL_HINT}") from None
    with tempfile.TemporaryDirectory(prefix="liar-lmeval-") as tmp:
        task_sha = write_bundled_task(Path(tmp))
        manager = TaskManager(include_path=tmp)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise UserError(f"unknown lm-eval task {unknown[0]!r}: use {BUNDLED_TASK} (bundled, offline) or a "
                            "task name from `lm_eval ls tasks`")
        with _lm(model, backend, threads, batch_size) as (lm, revision):
            try:
                out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager,
                                              log_samples=False, bootstrap_iters=1000, verbosity="ERROR")
            except (ConnectionError, OSError, ValueError) as e:  # datasets: not cached and no network
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"lm-eval could not load the data of {', '.join(tasks)}: {first} (offline? "
                                f"standard tasks need their data in the hub cache; {BUNDLED_TASK} is bundled)")
    return {"backend": backend, "model": model or "default", "revision": revision,
            "lm_eval": lm_eval.__version__, "limit": limit,
            "tasks": {t: _task_result(out, t, task_sha if t == BUNDLED_TASK else None) for t in tasks}}


def _task_result(out: dict, task: str, task_sha: str | None) -> dict:
    metrics = {k: v for k, v in out["results"][task].items() if "," in k}  # lm-eval's "metric,filter" keys
    samples = out.get("n-samples", {}).get(task, {})
    return {"metrics": metrics, "samples": samples.get("effective"), "task_version": out["versions"].get(task),
            "task_revision": task_sha}


@contextlib.contextmanager
def _lm(model: str | None, backend: str, threads: int | None, batch_size: int) -> Iterator[tuple[object, str]]:
    """(lm-eval model object, model revision) for the backend."""
    if backend == "torch":
        import torch
        from lm_eval.models.huggingface import HFLM

        from .models import open_model

        if threads:
            torch.set_num_threads(threads)
        m = open_model(model)
        yield HFLM(pretrained=m.module(), tokenizer=m.tokenizer, batch_size=batch_size), revision_of(m.source)
    elif backend == "llama.cpp":
        lm = llama_cpp_lm(Path(model), threads)
        try:
            yield lm, f"sha256:{_sha256(Path(model))}"
        finally:
            lm.llm.close()
    else:
        raise UserError(f"--tasks runs on the torch or llama.cpp backend (got {backend}): evaluate the "
                        "checkpoint or the .gguf file")


def llama_cpp_lm(path: Path, threads: int | None, n_ctx: int = CONTEXT):
    """An lm-eval model over a GGUF file in llama.cpp (the class is built here: lm-eval is optional)."""
    import numpy as np
    from lm_eval.api.model import TemplateLM
    from tqdm import tqdm

    from exporters.llamacpp import llama_logits_fn, llama_tokenize, open_llama

    class LlamaCppLM(TemplateLM):
        """Log-likelihoods from llama.cpp's logits; greedy generation by llama.cpp's sampler."""

        def __init__(self):
            super().__init__()
            self.llm = open_llama(path, n_ctx, threads)
            self.logits = llama_logits_fn(self.llm)

        @property
        def eot_token_id(self) -> int:
            return self.llm.token_eos()

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            return llama_tokenize(self.llm, string)  # no BOS, as liar-eval's perplexity and HFLM here

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            out = []
            for _, context, continuation in tqdm(requests, disable=disable_tqdm):
                ids = (context + continuation)[-(n_ctx + 1):]  # lm-eval's left truncation
                rows = self.logits(ids[:-1])[-len(continuation):].astype(np.float64)
                logp = rows - rows.max(1, keepdims=True)
                logp -= np.log(np.exp(logp).sum(1, keepdims=True))
                picked = logp[np.arange(len(continuation)), continuation]
                out.append((float(picked.sum()), bool((rows.argmax(1) == continuation).all())))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            raise UserError("perplexity tasks on a .gguf: run liar-eval without --tasks (it measures perplexity)")

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for context, options in tqdm([r.args for r in requests], disable=disable_tqdm):
                until = options.get("until") or None
                done = self.llm.create_completion(context, max_tokens=int(options.get("max_gen_toks", 256)),
                                                  temperature=0.0, stop=until)
                out.append(done["choices"][0]["text"])
            return out

    return LlamaCppLM()


def revision_of(source: dict) -> str:
    """Which weights were evaluated: a hub snapshot's commit, else the SHA-256 of the weight files."""
    path = Path(source["path"])
    if source.get("kind") == "hub" or path.parent.name == "snapshots":
        return f"hub:{path.name}"
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_sha256(f).encode())
    return f"sha256:{h.hexdigest()}"


def _sha256(path: Path) -> str:
    from .manifest import sha256

    return sha256(path)
