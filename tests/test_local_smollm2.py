"""Real model (slow): `liar-export --reconstruct liar+local` on SmolLM2-135M-Instruct.

The same recipe as the shared 50% fixture (LIAR only) plus local refinement with
the defaults: the refined model must be better on held-out text than the LIAR
one, and its GGUF export must pass the exporter's verification (the CLI exits 3
otherwise, which fails the fixture).
"""

import pytest

from toolchain.models import open_model
from toolchain.perplexity import encode, perplexity, torch_logits_fn
from toolchain.texts import heldout_text

pytestmark = pytest.mark.slow


def test_liar_plus_local_beats_liar_and_its_exports_verify(smollm2_s50, smollm2_s50_local):
    s = smollm2_s50_local
    assert s["widths"] == smollm2_s50["widths"]  # the same plan: refinement never changes the structure
    subs = s["local_reconstruction"]
    assert len(subs) == 30 and all(r["part"] == "block" and r["loss_after"] <= r["loss_before"] for r in subs)
    assert sum(r["loss_after"] for r in subs) < sum(r["loss_before"] for r in subs)
    gguf = s["exports"]["gguf"]
    assert gguf["passed"] and gguf["architecture"] == "deci"

    ids = encode(open_model(s["artifacts"]["hf"]).tokenizer, heldout_text())
    ppl = {name: perplexity(torch_logits_fn(open_model(summary["artifacts"]["hf"]).module()), ids, 256,
                            max_windows=8)["perplexity"]
           for name, summary in (("liar", smollm2_s50), ("liar+local", s))}
    print(f"held-out perplexity liar {ppl['liar']:.2f} liar+local {ppl['liar+local']:.2f} "
          f"(GGUF q8_0 {gguf['perplexity_llamacpp']:.2f})")
    assert ppl["liar+local"] < 0.95 * ppl["liar"]
