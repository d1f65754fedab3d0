"""Runs inside the image: a tiny random Llama (tests/tiny.py, mounted beside this
file) exported by the installed `liar-export` to HF and GGUF, verified against
PyTorch. The image cannot download models, so the model is built here."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import tiny_model  # noqa: E402


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="liar-smoke-"))
    src = work / "tiny"
    loaded = tiny_model(seed=0)
    loaded.model.save_pretrained(src)
    loaded.tokenizer.save_pretrained(src)
    out = work / "out"
    cmd = ["liar-export", str(src), "--to", "hf", "--to", "gguf", "-o", str(out), "--sparsity", "0.3",
           "--calib-samples", "4", "--calib-seqlen", "32", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"smoke: liar-export exited {proc.returncode}", file=sys.stderr)
        return 1
    summary = json.loads(proc.stdout)
    gguf = Path(summary["artifacts"]["gguf"])
    checks = {
        "hf checkpoint written": (Path(summary["artifacts"]["hf"]) / "model.safetensors").is_file(),
        "gguf written": gguf.is_file() and gguf.stat().st_size > 0,
        "gguf verified against PyTorch": summary["exports"]["gguf"]["passed"] is True,
        "blocks really smaller": summary["params"]["pruned"]["block"] < summary["params"]["dense"]["block"],
    }
    for name, ok in checks.items():
        print(f"smoke: {'ok  ' if ok else 'FAIL'} {name}")
    print(f"smoke: sparsity {summary['sparsity']:.3f}, gguf {gguf.stat().st_size} bytes, "
          f"architecture {summary['exports']['gguf']['architecture']}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
