"""Checkpoints load in plain transformers, in a process that cannot import liar-export.

Uniform widths are the family's own model type (Llama's o / down biases through its
`attention_bias` / `mlp_bias` flags, the other biases those flags switch written as zeros);
per-layer widths, or a bias no flag switches, load through the checkpoint's modeling file
with `trust_remote_code=True`. Either way the logits and greedy tokens must be those of
`open_model(dir).module()`, liar-export's own reading of the widths record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.families import FAMILY_CONFIGS, build
from tests.tiny import pruned, tiny_tokenizer, with_random_biases
from toolchain.checkpoint import save_checkpoint
from toolchain.hf_remote import REMOTE_FILE
from toolchain.models import Model, open_model
from toolchain.plan import LayerPlan, PruningPlan

FAMILIES = sorted(FAMILY_CONFIGS)
CASES = ("uniform", "uniform-bias", "per-layer")
STANDARD_WITH_BIASES = {"llama"}  # the only family whose flags switch both o_proj and down_proj biases
IDS = list(range(3, 30))
NEW_TOKENS = 6

# Runs in a fresh interpreter: liar-export's packages are blocked, so only transformers can read the files.
LOADER = textwrap.dedent('''
    import json, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {"toolchain", "exporters", "benchmarks", "tests"}:
                raise ImportError(f"{name} must not be imported here")
    sys.meta_path.insert(0, Block())
    import numpy as np, torch
    from transformers import AutoModelForCausalLM
    for job in json.loads(sys.argv[1]):
        try:
            model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=job["remote"],
                                                         dtype=torch.float32)
        except Exception as e:
            print(json.dumps({"dir": job["dir"], "remote": job["remote"], "error": str(e)}))
            continue
        ids = torch.tensor([job["ids"]])
        with torch.no_grad():
            np.save(job["out"], model(ids).logits[0].numpy())
            tokens = model.generate(ids, max_new_tokens=job["new"], do_sample=False)[0, len(job["ids"]):].tolist()
        print(json.dumps({"dir": job["dir"], "remote": job["remote"], "class": type(model).__name__, "tokens": tokens}))
''')


def load_elsewhere(jobs: list[dict], tmp: Path) -> dict[tuple[str, bool], dict]:
    """Run LOADER on `jobs` in a fresh process (offline, its own remote-code cache):
    {(dir, trust_remote_code): class and greedy tokens, or the error}."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "hf_modules"), "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}
    script = tmp / "load.py"
    script.write_text(LOADER)
    proc = subprocess.run([sys.executable, str(script), json.dumps(jobs)], capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(r["dir"], r["remote"]): r for r in map(json.loads, proc.stdout.splitlines())}


def layered_plan(dense: Model, uniform: bool) -> PruningPlan:
    """Per layer (query heads per KV group, KV groups, FFN channels): uniform, or all different."""
    d = dense.dims
    plan = PruningPlan.dense(d["num_layers"], d["num_heads"], d["num_kv_heads"], d["head_dim"], d["hidden_size"],
                             d["intermediate_size"])
    group = d["num_heads"] // d["num_kv_heads"]
    shapes = [(2, 2, 128)] * 4 if uniform else [(2, 2, 64), (4, 1, 128), (3, 2, 96), (1, 2, 32)]
    for i, (per, kv, ffn) in enumerate(shapes):
        step = d["intermediate_size"] // ffn
        plan.layers[i] = LayerPlan([k * group + j for k in range(kv) for j in range(per)], list(range(kv)),
                                   list(range(0, d["intermediate_size"], step)))
    return plan


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: threads only add contention on the shared build machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Every family × case as a pruned checkpoint, all loaded in one fresh process."""
    root = tmp_path_factory.mktemp("hf_compat")
    jobs, out = [], {}
    for model_type in FAMILIES:
        dense = Model.from_module(build(model_type, vocab_size=len(tiny_tokenizer())), tiny_tokenizer(),
                                  {"kind": "tiny", "path": model_type})
        for case in CASES:
            plan = layered_plan(dense, case != "per-layer")
            model = pruned(dense, plan)
            if case != "uniform":
                model = with_random_biases(model, seed=1)  # where LIAR puts them: every o_proj and down_proj
            d = root / f"{model_type}-{case}"
            save_checkpoint(model, d, {"plan": plan.to_json()})
            remote = (d / REMOTE_FILE).is_file()
            jobs.append({"dir": str(d), "remote": remote, "ids": IDS, "new": NEW_TOKENS, "out": str(d / "logits.npy")})
            out[model_type, case] = {"dir": d, "remote": remote, "compressed": model}
    refused = out["llama", "per-layer"]["dir"]  # transformers' own class, without the modeling file
    jobs.append({"dir": str(refused), "remote": False, "ids": IDS, "new": NEW_TOKENS, "out": ""})
    loaded = load_elsewhere(jobs, root)
    for rec in out.values():
        rec["loaded"] = loaded[str(rec["dir"]), rec["remote"]]
    out["refused"] = loaded[str(refused), False]
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_transformers_alone_reproduces_open_model(checkpoints, model_type, case):
    rec = checkpoints[model_type, case]
    ours = open_model(str(rec["dir"]))
    ids = torch.tensor([IDS])
    with torch.no_grad():
        want = ours.module()(ids).logits[0]
        tokens = ours.module().generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(IDS):].tolist()
        torch.testing.assert_close(want, rec["compressed"].module()(ids).logits[0], atol=1e-5, rtol=1e-5)
    assert "error" not in rec["loaded"], rec["loaded"].get("error")
    got = torch.from_numpy(np.load(rec["dir"] / "logits.npy"))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert rec["loaded"]["tokens"] == tokens
    assert ours.widths.to_json() == ours.config.liar_layers


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_uniform_widths_are_the_standard_model_type(checkpoints, model_type, case):
    rec = checkpoints[model_type, case]
    config = json.loads((rec["dir"] / "config.json").read_text())
    standard = case == "uniform" or (case == "uniform-bias" and model_type in STANDARD_WITH_BIASES)
    assert rec["remote"] is not standard and ("auto_map" in config) is not standard
    assert config["model_type"] == model_type
    cls = rec["loaded"]["class"]
    assert cls == config["architectures"][0] and cls.startswith("Liar") is not standard
    first = config["liar_layers"][0]
    if standard:
        for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size"):
            assert config[key] == first[key]


def test_flag_switched_biases_are_zeros_and_recorded(checkpoints):
    """Llama's attention_bias / mlp_bias switch q, k, v, o and gate, up, down together: q/k/v and
    gate/up get zero biases, and the record says every layer has o / down biases."""
    from safetensors.torch import load_file

    rec = checkpoints["llama", "uniform-bias"]
    config = json.loads((rec["dir"] / "config.json").read_text())
    assert config["attention_bias"] and config["mlp_bias"]
    assert all(w["o_proj_bias"] and w["down_proj_bias"] for w in config["liar_layers"])
    state = load_file(str(rec["dir"] / "model.safetensors"))
    for i in range(4):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert not state[f"model.layers.{i}.{name}.bias"].any()
        assert state[f"model.layers.{i}.self_attn.o_proj.bias"].any()


def test_the_modeling_file_imports_only_torch_and_transformers(checkpoints):
    source = (checkpoints["phi3", "per-layer"]["dir"] / REMOTE_FILE).read_text()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"copy", "torch", "transformers"}
    assert "class LiarPhi3ForCausalLM(Phi3ForCausalLM)" in source


def test_per_layer_checkpoint_without_remote_code_fails_loudly(checkpoints):
    """transformers' own Llama class refuses the smaller tensors instead of loading garbage."""
    assert "mismatch" in checkpoints["refused"]["error"].lower()


def _loads_in_plain_transformers(summary: dict, uniform: bool, tmp_path: Path) -> None:
    """The checkpoint of `summary` in a fresh process (remote code for per-layer widths): the same
    logits and greedy tokens as open_model's."""
    from toolchain.perplexity import encode
    from toolchain.texts import heldout_text

    d = Path(summary["artifacts"]["hf"])
    ours = open_model(str(d))
    assert ours.widths.is_uniform is uniform
    assert (d / REMOTE_FILE).is_file() is not uniform
    ids = encode(ours.tokenizer, heldout_text())[:96]
    loaded = load_elsewhere([{"dir": str(d), "remote": not uniform, "ids": ids, "new": 12,
                              "out": str(tmp_path / "logits.npy")}], tmp_path)[str(d), not uniform]
    with torch.no_grad():
        want = ours.module()(torch.tensor([ids])).logits[0]
        tokens = ours.module().generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):]
    got = torch.from_numpy(np.load(tmp_path / "logits.npy"))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert loaded["tokens"] == tokens.tolist()


@pytest.mark.slow
def test_smollm2_per_layer_checkpoint_in_plain_transformers(smollm2_s50, tmp_path):
    """The acceptance run, per-layer widths: SmolLM2 pruned 50% with global allocation (remote code)."""
    _loads_in_plain_transformers(smollm2_s50, False, tmp_path)


@pytest.mark.slow
def test_smollm2_uniform_checkpoint_in_plain_transformers(tmp_path):
    """The acceptance run, uniform widths: the same recipe with --allocation uniform (standard llama)."""
    from tests.conftest import SMOLLM2_S50_ARGS, liar_export

    args = [a if a != "global" else "uniform" for a in SMOLLM2_S50_ARGS]
    _loads_in_plain_transformers(liar_export(tmp_path / "uniform", "--to", "hf", *args), True, tmp_path)
