"""Runs inside the image: tiny random models exported by the installed `liar-export` and verified
against PyTorch. The image cannot download models, so they are built here, from tests/tiny.py and
tests/families.py (mounted beside this file):

- llama:   a tiny Llama (tests/tiny.py) → HF checkpoint + GGUF, 30% pruned;
- qwen3:   a tiny Qwen3 (tests/families.py: q/k norms, explicit head_dim, tied embeddings) → GGUF f16
           (at q4_k_m a random 64-wide model misses the top-1 tolerance: quantisation noise, not a bug);
- encoder: a tiny BERT encoder (bare BertModel, WordPiece tokenizer) → GGUF f16 + ONNX, when this
  image's liar-export has the encoder family (toolchain/families/bert.py); otherwise the step is
  reported as SKIP with the reason and does not fail the smoke test.

Prints one `smoke: ok|FAIL|SKIP ...` line per check; exit 0 when nothing failed.
usage: python smoke.py [llama|qwen3|encoder ...]     (default: all three)
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer  # noqa: E402

CALIB = ["--calib-samples", "4", "--calib-seqlen", "32"]


def export(src: Path, out: Path, *opts: str) -> dict | None:
    cmd = ["liar-export", str(src), "-o", str(out), "--sparsity", "0.3", *CALIB, "--json", *opts]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"smoke: FAIL {src.name}: liar-export exited {proc.returncode}")
        return None
    return json.loads(proc.stdout)


def report(name: str, checks: dict[str, bool]) -> bool:
    for what, ok in checks.items():
        print(f"smoke: {'ok  ' if ok else 'FAIL'} {name}: {what}")
    return all(checks.values())


def llama(work: Path) -> bool:
    src = work / "llama"
    loaded = tiny_model(seed=0)
    loaded.module().save_pretrained(src)
    loaded.tokenizer.save_pretrained(src)
    summary = export(src, work / "llama-out", "--to", "hf", "--to", "gguf")
    if summary is None:
        return False
    gguf = Path(summary["artifacts"]["gguf"])
    ok = report("llama", {
        "hf checkpoint written": (Path(summary["artifacts"]["hf"]) / "model.safetensors").is_file(),
        "gguf written": gguf.is_file() and gguf.stat().st_size > 0,
        "gguf verified against PyTorch": summary["exports"]["gguf"]["passed"] is True,
        "blocks really smaller": summary["params"]["pruned"]["block"] < summary["params"]["dense"]["block"],
    })
    print(f"smoke: llama: sparsity {summary['sparsity']:.3f}, gguf {gguf.stat().st_size} bytes, "
          f"architecture {summary['exports']['gguf']['architecture']}")
    return ok


def qwen3(work: Path) -> bool:
    import torch
    from families import build

    tok = tiny_tokenizer()
    src = work / "qwen3"
    model = build("qwen3", seed=0, vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model.to(torch.bfloat16).save_pretrained(src)
    tok.save_pretrained(src)
    summary = export(src, work / "qwen3-out", "--to", "gguf", "--quant", "f16")
    if summary is None:
        return False
    gguf = summary["exports"]["gguf"]
    ok = report("qwen3", {
        "gguf verified against PyTorch": gguf["passed"] is True,
        "blocks really smaller": summary["params"]["pruned"]["block"] < summary["params"]["dense"]["block"],
    })
    print(f"smoke: qwen3: sparsity {summary['sparsity']:.3f}, architecture {gguf['architecture']}")
    return ok


def wordpiece_tokenizer():
    """A tiny BERT WordPiece tokenizer: every printable ASCII character as a word start and as a
    `##` continuation (so no text maps to [UNK], which tokenisers may split differently), plus the
    words of tests/tiny.py's sample text."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    words = sorted({w.strip(string.punctuation).lower() for w in SAMPLE_TEXT.split()} - {""})
    vocab = {t: i for i, t in enumerate(dict.fromkeys(special + chars + ["##" + c for c in chars] + words))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]")


def encoder(work: Path) -> bool:
    if importlib.util.find_spec("toolchain.families.bert") is None:
        print("smoke: SKIP encoder: this image's liar-export has no encoder family "
              "(toolchain/families/bert.py is absent), so a BERT directory cannot be exported yet; "
              "the step is prepared in docker/smoke.py and runs once the image has it")
        return True
    import torch
    from transformers import BertConfig, BertModel

    tok = wordpiece_tokenizer()
    src = work / "bert"
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(src)
    tok.save_pretrained(src)
    summary = export(src, work / "bert-out", "--to", "gguf", "--to", "onnx", "--quant", "f16")
    if summary is None:
        return False
    exports = summary["exports"]
    ok = report("encoder", {
        "gguf verified against PyTorch": exports.get("gguf", {}).get("passed") is True,
        "onnx verified against PyTorch": exports.get("onnx", {}).get("verification", {}).get("passed") is True,
        "blocks really smaller": summary["params"]["pruned"]["block"] < summary["params"]["dense"]["block"],
    })
    print(f"smoke: encoder: sparsity {summary['sparsity']:.3f}, gguf architecture "
          f"{exports.get('gguf', {}).get('architecture')}")
    return ok


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="liar-smoke-"))
    steps = {"llama": llama, "qwen3": qwen3, "encoder": encoder}
    chosen = sys.argv[1:] or list(steps)
    unknown = [c for c in chosen if c not in steps]
    if unknown:
        print(f"smoke: unknown step(s) {unknown}; choose from {list(steps)}", file=sys.stderr)
        return 2
    results = {}
    for step in (steps[c] for c in chosen):
        t0 = time.perf_counter()
        results[step.__name__] = step(work)
        print(f"smoke: {step.__name__} took {time.perf_counter() - t0:.1f} s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
