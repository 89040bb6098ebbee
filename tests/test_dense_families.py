"""Guards the dense decoder families (llama, mistral, qwen2, qwen3): the draft models of speculative decoding."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from minimoe.families import config_from_hf  # noqa: E402
from minimoe.generate import Generator  # noqa: E402
from minimoe.loader import build_model  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, max_position_embeddings=256)
CASES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"attention_bias": True}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 24, "tie_word_embeddings": True}),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_dense_family_matches_transformers(family, tmp_path):
    config_cls, model_cls, extra = CASES[family]
    torch.manual_seed(0)
    hf = model_cls(config_cls(**COMMON, **extra)).float().eval()
    for p in hf.parameters():      # larger than the default init, so every weight visibly matters
        p.data.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path)
    net, cfg, _ = build_model(str(tmp_path), "auto", dtype=torch.float32)
    assert cfg.family == family and not cfg.is_moe
    ids = torch.randint(0, COMMON["vocab_size"], (2, 7))
    with torch.no_grad():
        ref = hf(ids).logits
        want = hf.generate(ids, max_new_tokens=12, do_sample=False)[:, 7:]
    gen = Generator(net, 2, 32)
    with torch.inference_mode():
        step = gen.cache.step(7, 0)
        logits = net(ids, step, gen.cache)
    assert (logits - ref).abs().max() / ref.abs().max() <= 1e-4
    assert torch.equal(Generator(net, 2, 32).generate(ids, 12), want)


def test_mlp_bias_is_refused():
    with pytest.raises(NotImplementedError, match="mlp_bias"):
        config_from_hf({**COMMON, "model_type": "llama", "mlp_bias": True})
