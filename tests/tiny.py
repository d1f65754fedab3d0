"""Tiny random-weight Llama models and a tiny byte-level BPE tokenizer.

They exercise shapes, surgery, export and parity in seconds; they say nothing
about quality (that is what the slow SmolLM2 tests are for).
"""

from __future__ import annotations

import functools
import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from toolchain.models import Model
from toolchain.plan import LayerPlan, PruningPlan

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes heads and channels. "
    "Linear interpolation predicts removed channels from kept ones. "
    "A pruned model must still load in llama.cpp and onnxruntime. "
) * 8


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 300-token byte-level BPE (GPT-2 style, with merges) trained on SAMPLE_TEXT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<|endoftext|>", pad_token="</s>")


def tiny_config(**overrides) -> LlamaConfig:
    kw = dict(vocab_size=len(tiny_tokenizer()), hidden_size=64, intermediate_size=128,
              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_model(seed: int = 0, **overrides) -> Model:
    """A random LlamaForCausalLM (in memory) with weights large enough to give non-trivial logits."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return Model.from_module(model.eval(), tiny_tokenizer(), {"kind": "tiny", "path": f"tiny-seed{seed}"})


def random_plan(model: Model, seed: int = 0, whole_groups: bool = False) -> PruningPlan:
    """A valid plan with different widths per layer (GQA-consistent)."""
    c = model.config
    plan = PruningPlan.dense(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                             c.head_dim, c.hidden_size, c.intermediate_size)
    rng = random.Random(seed)
    g = plan.group_size
    for i, lp in enumerate(plan.layers):
        if whole_groups:
            kv = sorted(rng.sample(range(plan.num_kv_heads), rng.randint(1, plan.num_kv_heads)))
            heads = [k * g + j for k in kv for j in range(g)]
        else:
            kv = list(range(plan.num_kv_heads))
            per = rng.randint(1, g)
            heads = sorted(k * g + j for k in kv for j in sorted(rng.sample(range(g), per)))
        n_ch = rng.choice([16, 32, 48, 64, 96]) if i else 32
        channels = sorted(rng.sample(range(plan.intermediate_size), n_ch))
        plan.layers[i] = LayerPlan(heads, kv, channels)
    return plan


def plan_of(model: Model, layers: list[tuple[list[int], list[int], int]]) -> PruningPlan:
    """A plan from (heads, kv_heads, n_channels) per layer; channels spread over the layer."""
    c = model.config
    plan = PruningPlan.dense(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                             c.head_dim, c.hidden_size, c.intermediate_size)
    spread = lambda n: [i * c.intermediate_size // n for i in range(n)]  # noqa: E731
    plan.layers = [LayerPlan(h, kv, spread(n)) for h, kv, n in layers]
    return plan


def pruned(model: Model, plan: PruningPlan) -> Model:
    from toolchain.compress import apply_plan

    return apply_plan(model, plan)


def with_random_biases(model: Model, seed: int) -> Model:
    """`model` with random biases on every o_proj and down_proj (what reconstruction adds)."""
    module = model.module()
    g = torch.Generator().manual_seed(seed)
    for layer in module.model.layers:
        for parent, name in ((layer.self_attn, "o_proj"), (layer.mlp, "down_proj")):
            old = getattr(parent, name)
            new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.copy_(torch.randn(old.out_features, generator=g) * 0.5)
            setattr(parent, name, new)
    return Model.from_module(module, model.tokenizer, model.source, model.meta)


def sample_ids(n: int = 24, seed: int = 0, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, len(tiny_tokenizer()), (batch, n), generator=g)


CALIB = sample_ids(n=32, seed=7, batch=12)  # the calibration batch every in-process compression test uses


def compressed(model: Model, plan: PruningPlan | None = None, local=None, device: str = "cpu", **options):
    """`model` compressed in memory with CompressOptions(**options) on CALIB: (new model, result)."""
    from toolchain.compress import compress
    from toolchain.recipe import CompressOptions
    from toolchain.sinks import MemorySink

    options.setdefault("round_to", 16)
    sink = MemorySink(model)
    result = compress(model, CALIB, CompressOptions(**options), torch.device(device), sink, plan=plan,
                      local=local, progress=False)
    return sink.close(result.widths, {"plan": result.plan.to_json()}), result
