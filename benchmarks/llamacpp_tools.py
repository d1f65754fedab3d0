"""llama.cpp's own tools on liar-export's GGUF files: built, checked, and timed against liar-bench.

    python -m benchmarks.llamacpp_tools [-o benchmarks/results/llamacpp_tools] [--work out/llamacpp-tools]
        [--stages build,export,check,speed] [--threads 1] [--repeats 7] [--cache DIR] [--native]

Stages (each adds its part to OUT/results.json, so a later `--stages speed` re-measures only):

build   the llama-cpp-python version pinned in pyproject.toml is fetched as an sdist
        (`pip download --no-binary`) into the cache directory (default
        ${XDG_CACHE_HOME:-~/.cache}/liar-export/llamacpp-tools, outside the checkout),
        extracted, and its vendored llama.cpp configured with cmake (-DGGML_NATIVE=OFF, the
        portable build .ci/install and the Dockerfile compile for llama-cpp-python, unless
        --native) and built for the tools below only, on every core (--jobs).
export  dense and 50%-pruned SmolLM2 q8_0 GGUFs with `liar-export` (global allocation: the
        pruned file uses the per-layer `deci` architecture); existing exports are reused.
check   every llama.cpp command of the README section "Run it with llama.cpp's own tools"
        (read from README.md) and the commands proposed for it (PROPOSED below), on both
        files: exit code and output sanity; llama-server must answer an HTTP request on
        localhost and shut down.
speed   decode (and prefill) speed-up of the pruned file over the dense one measured by
        `liar-bench run` and by `llama-bench` on the same pair, same thread count, pinned to
        the same cores; llama-bench is run one repetition per process, alternating the two
        files, half of its rounds before and half after liar-bench. Medians. Acceptance: the
        two decode speed-ups agree within 10%.

Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from toolchain.atomic import atomic_path
from toolchain.cliutil import run_main
from toolchain.errors import LiarError, UserError

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("llama-cli", "llama-completion", "llama-server", "llama-bench", "llama-perplexity")
STAGES = ("build", "export", "check", "speed")
AGREEMENT = 0.10
HELDOUT = "toolchain/data/heldout_legal.txt"
PROMPT = "The licensee may"
# (name, liar-export options) — the pair the brief and the README's benchmark section use.
EXPORTS = {
    "dense": ["--sparsity", "0", "--to", "gguf", "--quant", "q8_0"],
    "pruned": ["--sparsity", "0.5", "--allocation", "global", "--to", "gguf", "--quant", "q8_0",
               "--calib-samples", "32"],
}
README_SECTION = "### Run it with llama.cpp's own tools"
README_MODEL = re.compile(r"\S+\.gguf")
# Commands proposed for the README section, checked the same way ({model}: the file under test;
# {dense}/{pruned}: both files; {port}: a free local port). `#` starts the README comment.
PROPOSED = [
    f'llama-completion -m {{model}} -p "{PROMPT}" -n 64 -no-cnv                  # plain completion',
    'llama-cli -m {model} -st -p "Hi" -n 32                                   # one chat turn (embedded template)',
    "llama-server -m {model} --port {port}                                    # OpenAI-compatible API",
    "curl http://localhost:{port}/v1/chat/completions -d "
    "'{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":32}'",
    "llama-bench -m {dense} -m {pruned} -t 1 -p 128 -n 64 -fa off             # speed, dense vs pruned",
    f"llama-perplexity -m {{model}} -f {HELDOUT} -c 256                      # perplexity",
]


def _log(msg: str) -> None:
    print(f"[llamacpp-tools] {msg}", file=sys.stderr, flush=True)


def _pin(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(name)}==([^"]+)"', text)
    if not m:
        raise LiarError(f"no {name}==VERSION pin in pyproject.toml")
    return m.group(1)


def _tail(text: str, n: int = 1500) -> str:
    return text[-n:] if text else ""


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------ build ---
def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "liar-export" / "llamacpp-tools"


def fetch_source(cache: Path, version: str) -> Path:
    """The llama-cpp-python sdist of `version`, downloaded and extracted under `cache`; its vendored llama.cpp."""
    src = cache / "src" / f"llama_cpp_python-{version}"
    llama = src / "vendor" / "llama.cpp"
    if (llama / "CMakeLists.txt").is_file():
        return llama
    sdists = cache / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    found = sorted(sdists.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
               f"llama-cpp-python=={version}", "-d", str(sdists)]
        _log("$ " + shlex.join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(sdists.glob(f"llama_cpp_python-{version}.tar.gz"))
        if not found:
            raise LiarError(f"pip download of the llama-cpp-python {version} sdist failed "
                            f"(exit {proc.returncode}): {_tail(proc.stderr, 600)}")
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    try:
        with tarfile.open(found[0]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.11.4: check member paths by hand
                for m in tar.getmembers():
                    if m.name.startswith("/") or ".." in Path(m.name).parts:
                        raise LiarError(f"unsafe path in {found[0]}: {m.name}")
                tar.extractall(tmp)
        if not src.exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            (tmp / src.name).rename(src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not (llama / "CMakeLists.txt").is_file():
        raise LiarError(f"{found[0]} has no vendor/llama.cpp")
    return llama


def cmake_args(native: bool) -> list[str]:
    return ["-DCMAKE_BUILD_TYPE=Release", f"-DGGML_NATIVE={'ON' if native else 'OFF'}",
            "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
            "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            # no download at build time: the server's web UI is neither fetched nor built
            "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]


def build_tools(cache: Path, version: str, native: bool, jobs: int) -> dict:
    t0 = time.perf_counter()
    load0 = _loadavg()
    llama = fetch_source(cache, version)
    build = cache / "build" / f"{version}-{'native' if native else 'portable'}"
    args = cmake_args(native)
    stamp = build / "liar-config.json"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    if not stamp.is_file() or json.loads(stamp.read_text()).get("args") != args:
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        cmd = ["cmake", "-S", str(llama), "-B", str(build), *gen, *args]
        _log("$ " + shlex.join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (build / "configure.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise LiarError(f"cmake configure failed (exit {proc.returncode}): {_tail(proc.stderr, 800)}")
        stamp.write_text(json.dumps({"args": args}))
    cmd = ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TOOLS]
    _log("$ " + shlex.join(cmd))
    with open(build / "build.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise LiarError(f"llama.cpp build failed (exit {proc.returncode}); see {build / 'build.log'}")
    bindir = build / "bin"
    missing = [t for t in TOOLS if not (bindir / t).is_file()]
    if missing:
        raise LiarError(f"built, but {', '.join(missing)} missing from {bindir}")
    ver = subprocess.run([str(bindir / "llama-bench"), "--version"], capture_output=True, text=True)
    commit = _first(re.findall(r"version: \d+ \((\w+)\)", ver.stdout + ver.stderr))
    return {"llama_cpp_python": version, "source": str(llama), "build_dir": str(build),
            "bin": str(bindir), "cmake_args": [*gen, *args], "jobs": jobs, "targets": list(TOOLS),
            "llama_cpp_commit": commit, "seconds": round(time.perf_counter() - t0, 1),
            "loadavg_before": load0, "loadavg_after": _loadavg(),
            "version_text": (ver.stdout + ver.stderr).strip()[-300:]}


def _first(xs):
    return xs[0] if xs else None


# ----------------------------------------------------------------- export ---
def _console(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise LiarError(f"{name} is not installed: pip install liar-export")
    return found


def export_models(work: Path) -> dict:
    models = {}
    for name, opts in EXPORTS.items():
        out = work / name
        summary = out / "summary.json"
        cmd = [_console("liar-export"), *opts, "-o", str(out)]
        seconds = None
        if not summary.is_file():
            _log("$ " + shlex.join(cmd))
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
            seconds = round(time.perf_counter() - t0, 1)
            if proc.returncode:
                raise LiarError(f"liar-export failed (exit {proc.returncode}) for {name}")
        doc = json.loads(summary.read_text())
        gguf = Path(doc["artifacts"]["gguf"])
        models[name] = {"command": "liar-export " + shlex.join(opts + ["-o", str(out)]), "path": str(gguf),
                        "bytes": gguf.stat().st_size, "architecture": doc["exports"]["gguf"]["architecture"],
                        "sparsity": doc.get("sparsity"), "export_seconds": seconds,
                        "verified": doc["exports"]["gguf"].get("passed")}
    return models


# ------------------------------------------------------------------ check ---
def readme_commands() -> list[str]:
    """The llama.cpp command lines of the README section (bash block), without comments."""
    text = (ROOT / "README.md").read_text()
    start = text.find(README_SECTION)
    if start < 0:
        raise LiarError(f"README.md has no section {README_SECTION!r}")
    m = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    if not m:
        raise LiarError(f"no bash block in README section {README_SECTION!r}")
    lines = [ln.split("  #")[0].strip() for ln in m.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _strip_comment(line: str) -> str:
    return line.split("  #")[0].strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv(line: str, bindir: Path, subs: dict) -> list[str]:
    """A command line with README placeholders replaced: any *.gguf path by the file under test,
    port 8080 by a free one, llama-* by the built tool."""
    if "{model}" not in line and "{dense}" not in line:
        line = README_MODEL.sub(lambda _: "{model}", line)
    line = line.replace("8080", "{port}")
    for key in ("model", "dense", "pruned", "port"):  # not str.format: a JSON body has braces of its own
        line = line.replace("{" + key + "}", str(subs[key]))
    argv = shlex.split(line)
    if argv and argv[0].startswith("llama-"):
        argv[0] = str(bindir / argv[0])
    return argv


def _run(argv: list[str], timeout: float, stdin: str | None = None) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, input=stdin if stdin is not None else "", capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, errors="replace")
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 2), "stdout": out, "stderr": err}


def _judge(tool: str, argv: list[str], res: dict, subs: dict) -> tuple[bool, str, dict]:
    """Output sanity for one finished command: (ok, detail, values)."""
    out, err = res["stdout"], res["stderr"]
    if res["rc"] is None:
        return False, "timed out", {}
    if res["rc"] != 0:
        msg = _first([ln for ln in (err + out).splitlines() if "error" in ln.lower()]) or _tail(err, 200)
        return False, f"exit {res['rc']}: {msg.strip()}", {}
    if tool == "llama-completion":
        prompt = argv[argv.index("-p") + 1] if "-p" in argv else ""
        new = out.split(prompt, 1)[1] if prompt and prompt in out else out
        words = re.findall(r"[A-Za-z]{2,}", new)
        ok = prompt in out and len(words) >= 3
        return ok, f"{len(words)} words after the prompt: {new.strip()[:80]!r}", {"generated": new.strip()[:400]}
    if tool == "llama-cli":
        words = re.findall(r"[A-Za-z]{2,}", out)
        return len(words) >= 2, f"reply {out.strip()[-80:]!r}", {"output": out.strip()[-400:]}
    if tool == "llama-bench":
        rows = [ln for ln in out.splitlines() if ln.startswith("|") and ("pp" in ln or "tg" in ln)]
        types = re.findall(r"^\|\s*(\w+) [^|]*\|", "\n".join(rows), re.M)
        want = {subs["dense"]: "llama", subs["pruned"]: "deci"}
        ok = len(rows) >= 2 and all(t in ("llama", "deci") for t in types) and (
            "deci" in types if subs["pruned"] in argv else True)
        return ok, f"{len(rows)} rows, model types {sorted(set(types))}", {"rows": rows, "expected": list(want.values())}
    if tool == "llama-perplexity":
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out + err)
        if not m:
            return False, "no 'Final estimate: PPL' line", {}
        ppl = float(m.group(1))
        return math.isfinite(ppl) and ppl > 1, f"PPL {ppl:.2f} ± {m.group(2)}", {"perplexity": ppl,
                                                                                "stderr_pm": float(m.group(2))}
    return True, "exit 0", {}


def _http(url: str, body: bytes | None, timeout: float) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout) as e:
        return 0, str(e)


def check_server(server_line: str, client_lines: list[str], bindir: Path, subs: dict, source: str) -> list[dict]:
    """Start llama-server, wait for /health, run the client lines (curl), stop it with SIGTERM."""
    argv = _argv(server_line, bindir, subs)
    port = subs["port"]
    base = {"source": source, "tool": "llama-server", "model": subs["label"], "command": shlex.join(argv)}
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    rows = []
    try:
        status, text = 0, ""
        while time.perf_counter() - t0 < 300 and proc.poll() is None:
            status, text = _http(f"http://127.0.0.1:{port}/health", None, 5)
            if status == 200:
                break
            time.sleep(1)
        ready = round(time.perf_counter() - t0, 2)
        ok = status == 200
        rows.append({**base, "rc": proc.poll(), "seconds": ready, "ok": ok,
                     "detail": f"/health {status} after {ready} s" if ok else f"not ready: {status} {text[:100]}"})
        if not ok:
            return rows
        for line in client_lines:
            cargv = _argv(line, bindir, subs)
            res = _run(cargv, timeout=600)
            ok, detail, values = False, "", {}
            if res["rc"] == 0:
                try:
                    doc = json.loads(res["stdout"])
                    content = doc["choices"][0]["message"]["content"]
                    ok = isinstance(content, str) and len(content.strip()) > 0
                    detail = f"reply {content.strip()[:80]!r} ({doc.get('usage', {}).get('completion_tokens')} tokens)"
                    values = {"reply": content[:400], "usage": doc.get("usage")}
                except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
                    detail = f"bad response ({type(e).__name__}): {res['stdout'][:160]!r}"
            else:
                detail = f"exit {res['rc']}: {res['stderr'][-200:]!r}"
            rows.append({"source": source, "tool": cargv[0], "model": subs["label"], "command": shlex.join(cargv),
                         "rc": res["rc"], "seconds": res["seconds"], "ok": ok, "detail": detail, **values})
    finally:
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rc = f"killed after SIGTERM timeout ({rc})"
        log.seek(0)
        server_log = log.read()
        log.close()
        gone = _http(f"http://127.0.0.1:{port}/health", None, 2)[0] == 0
        rows.append({**base, "command": "SIGTERM " + base["command"], "rc": rc,
                     "seconds": round(time.perf_counter() - t1, 2), "ok": rc == 0 and gone,
                     "detail": f"exit {rc} after SIGTERM; port {'closed' if gone else 'still answering'}",
                     "server_log_tail": _tail(server_log, 600)})
    return rows


def run_lines(lines: list[str], source: str, bindir: Path, models: dict) -> list[dict]:
    rows = []
    dense, pruned = models["dense"]["path"], models["pruned"]["path"]
    pair_lines = [ln for ln in lines if "{dense}" in ln]
    single = [ln for ln in lines if ln not in pair_lines]
    for label in ("dense", "pruned"):
        subs = {"model": models[label]["path"], "dense": dense, "pruned": pruned, "port": _free_port(),
                "label": label}
        i = 0
        while i < len(single):
            line = single[i]
            tool = shlex.split(line)[0]
            if tool == "llama-server":
                clients = []
                while i + 1 < len(single) and shlex.split(single[i + 1])[0] == "curl":
                    clients.append(single[i + 1])
                    i += 1
                rows += check_server(line, clients, bindir, subs, source)
            elif tool == "curl":
                rows.append({"source": source, "tool": "curl", "model": label, "command": line, "rc": None,
                             "seconds": 0, "ok": False, "detail": "curl without a llama-server line before it"})
            else:
                rows.append(check_line(line, tool, bindir, subs, source))
            i += 1
    for line in pair_lines:
        subs = {"model": dense, "dense": dense, "pruned": pruned, "port": _free_port(), "label": "dense+pruned"}
        rows.append(check_line(line, shlex.split(line)[0], bindir, subs, source))
    return rows


def check_line(line: str, tool: str, bindir: Path, subs: dict, source: str) -> dict:
    argv = _argv(line, bindir, subs)
    # Interactive chat (no -p): one user line on stdin, then end of input.
    interactive = tool == "llama-cli" and "-p" not in argv and "-f" not in argv
    _log(f"{source} [{subs['label']}] $ {shlex.join(argv)}")
    res = _run(argv, timeout=900, stdin="Hi\n" if interactive else None)
    ok, detail, values = _judge(tool, argv, res, subs)
    return {"source": source, "tool": tool, "model": subs["label"], "command": shlex.join(argv),
            "stdin": "Hi\\n" if interactive else None, "rc": res["rc"], "seconds": res["seconds"], "ok": ok,
            "detail": detail, **values, "stderr_tail": _tail(res["stderr"], 400) if not ok else None}


def check_tools(bindir: Path, models: dict) -> dict:
    load0 = _loadavg()
    readme = readme_commands()
    rows = run_lines(readme, "README.md", bindir, models)
    rows += run_lines([_strip_comment(ln) for ln in PROPOSED], "proposed", bindir, models)
    ppl = {r["model"]: r["perplexity"] for r in rows if r.get("perplexity") and r["source"] == "proposed"}
    ranking = None
    if {"dense", "pruned"} <= set(ppl):
        ranking = {"dense": ppl["dense"], "pruned": ppl["pruned"], "pruned_higher": ppl["pruned"] > ppl["dense"]}
    return {"readme_commands": readme, "proposed_commands": PROPOSED, "rows": rows,
            "perplexity": ranking, "loadavg_before": load0, "loadavg_after": _loadavg()}


# ------------------------------------------------------------------ speed ---
def llama_bench_round(bench: Path, model: str, threads: int, prompt: int, gen: int, cores: list[int]) -> list[dict]:
    argv = [str(bench), "-m", model, "-t", str(threads), "-p", str(prompt), "-n", str(gen), "-d", f"0,{prompt}",
            "-fa", "off", "-r", "1", "-o", "json"]
    proc = subprocess.run(argv, capture_output=True, text=True,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    if proc.returncode:
        raise LiarError(f"llama-bench failed (exit {proc.returncode}): {_tail(proc.stderr, 400)}")
    return json.loads(proc.stdout)


def speed(bindir: Path, models: dict, work: Path, a: argparse.Namespace) -> dict:
    cores = sorted(os.sched_getaffinity(0))[: a.threads] if hasattr(os, "sched_getaffinity") else []
    bench = bindir / "llama-bench"
    samples: dict[str, dict[str, list[float]]] = {k: {"tg": [], "pp": []} for k in ("dense", "pruned")}
    info: dict[str, dict] = {}
    load = {"start": _loadavg()}

    def rounds(n: int) -> None:
        for r in range(n):
            for label in ("dense", "pruned"):
                for row in llama_bench_round(bench, models[label]["path"], a.threads, a.prompt_tokens,
                                             a.gen_tokens, cores):
                    if row["n_gen"] == a.gen_tokens and row["n_depth"] == a.prompt_tokens:
                        samples[label]["tg"] += row["samples_ts"]
                    elif row["n_prompt"] == a.prompt_tokens and row["n_depth"] == 0 and row["n_gen"] == 0:
                        samples[label]["pp"] += row["samples_ts"]
                    info[label] = {k: row.get(k) for k in ("model_type", "model_size", "model_n_params",
                                                           "build_commit", "cpu_info", "n_threads", "flash_attn",
                                                           "type_k", "n_batch", "n_ubatch")}
            _log(f"llama-bench round: dense tg {samples['dense']['tg'][-1]:.1f} t/s, "
                 f"pruned tg {samples['pruned']['tg'][-1]:.1f} t/s")

    first = (a.repeats + 1) // 2
    rounds(first)
    load["after_llama_bench_1"] = _loadavg()
    results = work / "liar-bench.json"
    cmd = [_console("liar-bench"), "run", models["pruned"]["path"], "--baseline", models["dense"]["path"],
           "--threads", str(a.threads), "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens),
           "--repeats", str(a.repeats), "--no-quality", "-o", str(results)]
    _log("$ " + shlex.join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if proc.returncode:
        raise LiarError(f"liar-bench run failed (exit {proc.returncode})")
    load["after_liar_bench"] = _loadavg()
    rounds(a.repeats - first)
    load["end"] = _loadavg()

    doc = json.loads(results.read_text())
    by_role = {x["role"]: x for x in doc["artifacts"]}
    cand, base = by_role["candidate"], by_role["baseline"]
    med = statistics.median
    lb = {label: {"decode_tokens_per_s": med(s["tg"]), "prefill_tokens_per_s": med(s["pp"]),
                  "decode_samples": s["tg"], "prefill_samples": s["pp"], **info[label]}
          for label, s in samples.items()}
    lb_decode = lb["pruned"]["decode_tokens_per_s"] / lb["dense"]["decode_tokens_per_s"]
    lb_prefill = lb["pruned"]["prefill_tokens_per_s"] / lb["dense"]["prefill_tokens_per_s"]
    ours = cand["ratios"]
    lv = {label: {"decode_ms_per_token": x["decode"]["latency_ms"]["median"],
                  "decode_tokens_per_s": x["decode"]["tokens_per_s"]["median"],
                  "prefill_tokens_per_s": x["prefill"][str(a.prompt_tokens)]["tokens_per_s"]["median"]}
          for label, x in (("dense", base), ("pruned", cand))}
    diff = ours["decode_speedup"] / lb_decode - 1
    return {
        "settings": {"threads": a.threads, "cores": cores, "repeats": a.repeats, "prompt_tokens": a.prompt_tokens,
                     "gen_tokens": a.gen_tokens, "llama_bench": "one repetition per process (-r 1, warm-up on), "
                     "dense/pruned alternating, -fa off (llama-cpp-python's default), F16 KV cache, tg at depth "
                     "= prompt tokens", "liar_bench_command": shlex.join(cmd)},
        "loadavg": load,
        "llama_bench": {**lb, "decode_speedup": lb_decode, "prefill_speedup": lb_prefill},
        "liar_bench": {**lv, "decode_speedup": ours["decode_speedup"],
                       "decode_speedup_tokens_per_s": lv["pruned"]["decode_tokens_per_s"]
                       / lv["dense"]["decode_tokens_per_s"],
                       "prefill_speedup": ours["prefill_speedup"][str(a.prompt_tokens)],
                       "ideal_decode_speedup": ours["ideal_decode_speedup"], "results_file": str(results)},
        "acceptance": {"criterion": f"|liar-bench / llama-bench decode speed-up - 1| <= {AGREEMENT:.0%}",
                       "relative_difference": diff, "met": abs(diff) <= AGREEMENT},
    }


# ----------------------------------------------------------------- report ---
def markdown(doc: dict) -> str:
    md = ["## llama.cpp tools on liar-export GGUF files (dense vs 50% pruned `deci`)", ""]
    b = doc.get("build")
    if b:
        md += [f"Tools built from the llama-cpp-python {b['llama_cpp_python']} sdist's vendored llama.cpp "
               f"(commit {b['llama_cpp_commit']}): `cmake {' '.join(b['cmake_args'])}`, targets "
               f"{', '.join(b['targets'])}, `-j {b['jobs']}`; {b['seconds']:.0f} s (load average "
               f"{b['loadavg_before'][0]} → {b['loadavg_after'][0]}).", ""]
    m = doc.get("models")
    if m:
        md += ["| file | command | architecture | MiB | verified |", "|---|---|---|---|---|"]
        md += [f"| {k} | `{v['command']}` | {v['architecture']} | {v['bytes'] / 2**20:.1f} | {v['verified']} |"
               for k, v in m.items()]
        md.append("")
    c = doc.get("check")
    if c:
        md += ["### Commands", "", "| source | model | command | exit | s | ok | detail |",
               "|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            cmd = re.sub(r"\S*/bin/(llama-\w+)", r"\1", r["command"])
            cmd = cmd.replace(m["dense"]["path"], "DENSE.gguf").replace(m["pruned"]["path"], "PRUNED.gguf")
            cmd = cmd.replace(str(ROOT) + "/", "")
            detail = str(r["detail"]).replace("|", "\\|").replace("\n", " ")
            cmd = cmd.replace("|", "\\|")
            md.append(f"| {r['source']} | {r['model']} | `{cmd}` | {r['rc']} | "
                      f"{r['seconds']} | {'yes' if r['ok'] else '**no**'} | {detail} |")
        bad = [r for r in c["rows"] if not r["ok"]]
        md += ["", f"{len(c['rows']) - len(bad)}/{len(c['rows'])} command runs passed; failing: "
               + (", ".join(sorted({f"{r['source']}: {r['tool']}" for r in bad})) or "none") + ".", ""]
    s = doc.get("speed")
    if s:
        lb, lv, st = s["llama_bench"], s["liar_bench"], s["settings"]
        md += ["### Decode speed-up: liar-bench vs llama-bench (same files, same threads and cores)", "",
               "| tool | dense decode tok/s | pruned decode tok/s | decode speed-up | "
               f"dense prefill {st['prompt_tokens']} tok/s | pruned prefill tok/s | prefill speed-up |",
               "|---|---|---|---|---|---|---|",
               f"| llama-bench | {lb['dense']['decode_tokens_per_s']:.1f} | {lb['pruned']['decode_tokens_per_s']:.1f} "
               f"| {lb['decode_speedup']:.3f}× | {lb['dense']['prefill_tokens_per_s']:.0f} | "
               f"{lb['pruned']['prefill_tokens_per_s']:.0f} | {lb['prefill_speedup']:.3f}× |",
               f"| liar-bench | {lv['dense']['decode_tokens_per_s']:.1f} | {lv['pruned']['decode_tokens_per_s']:.1f} "
               f"| {lv['decode_speedup']:.3f}× | {lv['dense']['prefill_tokens_per_s']:.0f} | "
               f"{lv['pruned']['prefill_tokens_per_s']:.0f} | {lv['prefill_speedup']:.3f}× |", "",
               f"{st['threads']} thread(s) pinned to core(s) {st['cores']}, {st['gen_tokens']} tokens decoded after "
               f"{st['prompt_tokens']}, medians of {st['repeats']} processes per file and tool; liar-bench's "
               f"speed-up is the ratio of median per-token latencies, llama-bench's that of median tg tokens/s "
               f"(liar-bench's tokens/s ratio: {lv['decode_speedup_tokens_per_s']:.3f}×). Ideal (bytes read per "
               f"token): {lv['ideal_decode_speedup']:.3f}×. Load average during the run: "
               + ", ".join(f"{k} {v[0]}" for k, v in s["loadavg"].items()) + ".", "",
               f"Acceptance ({s['acceptance']['criterion']}): difference "
               f"{s['acceptance']['relative_difference']:+.1%} → **{'met' if s['acceptance']['met'] else 'NOT met'}**.",
               ""]
    md.append(f"Reproduce: `{doc['command']}`")
    return "\n".join(md) + "\n"


def main_(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="llamacpp_tools", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="benchmarks/results/llamacpp_tools", help="results directory")
    p.add_argument("--work", default="out/llamacpp-tools", help="exports and logs")
    p.add_argument("--cache", default=None, help="sdist, source and build cache (default: %(default)s → "
                                                  f"{default_cache()})")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    p.add_argument("--native", action="store_true", help="-DGGML_NATIVE=ON (default OFF: the portable build "
                                                          "llama-cpp-python is compiled with)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs (default: all cores)")
    p.add_argument("--threads", type=int, default=1, help="threads for the timing (default 1)")
    p.add_argument("--repeats", type=int, default=7, help="processes per file and tool (default 7)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    a = p.parse_args(argv)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise UserError(f"--stages: unknown {', '.join(sorted(unknown))} (choose from {', '.join(STAGES)})")
    out, work = Path(a.output), Path(a.work).resolve()
    cache = Path(a.cache).resolve() if a.cache else default_cache()
    if cache == ROOT or ROOT in cache.parents:
        raise UserError(f"--cache {cache} is inside the checkout: put it outside (e.g. the default)")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    doc = json.loads(results.read_text()) if results.is_file() else {}
    version = _pin("llama-cpp-python")

    def save() -> None:
        doc.update({"kind": "liar-export-llamacpp-tools", "updated": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "command": "python -m benchmarks.llamacpp_tools " + shlex.join(
            [x for x in argv]) if argv else "python -m benchmarks.llamacpp_tools"})
        with atomic_path(results) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
        with atomic_path(out / "results.md") as tmp:
            tmp.write_text(markdown(doc))

    if "build" in stages:
        doc["build"] = build_tools(cache, version, a.native, a.jobs)
        save()
    if "export" in stages:
        doc["models"] = export_models(work)
        save()
    for stage, key in (("check", "build"), ("check", "models"), ("speed", "build"), ("speed", "models")):
        if stage in stages and not doc.get(key):
            raise UserError(f"--stages {stage} needs the {'build' if key == 'build' else 'export'} stage's "
                            f"results in {results}: run that stage first")
    bindir = Path(doc["build"]["bin"]) if doc.get("build") else None
    if "check" in stages:
        doc["check"] = check_tools(bindir, doc["models"])
        save()
    if "speed" in stages:
        doc["speed"] = speed(bindir, doc["models"], work, a)
        save()
    print(markdown(doc))
    failed = [r for r in doc.get("check", {}).get("rows", []) if r["source"] == "proposed" and not r["ok"]]
    if failed:
        _log(f"{len(failed)} proposed command run(s) failed")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("llamacpp_tools", main_, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
