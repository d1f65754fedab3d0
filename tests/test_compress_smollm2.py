"""Real model (slow): SmolLM2-135M-Instruct pruned at 0.5 loads back and generates text."""

import pytest
import torch

from toolchain.models import open_model
from toolchain.perplexity import encode, perplexity, torch_logits_fn
from toolchain.texts import heldout_text

pytestmark = pytest.mark.slow


def test_smollm2_s50_loads_back_and_generates(smollm2_s50, smollm2_dense):
    s = smollm2_s50
    assert 0.45 < s["sparsity"] < 0.55
    widths = {(w["num_attention_heads"], w["intermediate_size"]) for w in s["widths"]}
    assert len(widths) > 1  # global allocation gives per-layer widths
    assert all(w["num_attention_heads"] % w["num_key_value_heads"] == 0 for w in s["widths"])
    pruned = open_model(s["artifacts"]["hf"])
    tok = pruned.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = pruned.module().generate(**prompt, max_new_tokens=24, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    print("generated:", repr(text))
    assert len(text.strip()) > 0
    ids = encode(tok, heldout_text())
    ppl = perplexity(torch_logits_fn(pruned.module()), ids, 256, max_windows=8)["perplexity"]
    dense = smollm2_dense
    dense_ppl = perplexity(torch_logits_fn(dense.module()), ids, 256, max_windows=8)["perplexity"]
    print(f"held-out perplexity dense {dense_ppl:.2f} pruned {ppl:.2f}")
    assert dense_ppl < ppl < 20 * dense_ppl  # pruned is worse, but nowhere near collapse (>1e3)
