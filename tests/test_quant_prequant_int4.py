"""Guards GPTQ / AWQ int4 checkpoints (prequant_int4.py): the Hub's packings, written here from their published
layouts (bit loops, not minimoe's pack_words), load into minimoe's int4 format and compute exactly what their
dequantized weights compute, through the loop oracle and the fused int4 kernels (interpreted); what does not map
onto minimoe's int4 is refused in one sentence."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import rel_err
from minimoe.config_fields import UnsupportedConfig
from minimoe.families import config_from_hf
from minimoe.generate import Generator
from minimoe.loader import CheckpointError, build_model
from minimoe.qexperts import QuantExperts
from minimoe.qweights import QuantWeight
from minimoe.settings import RunSettings

G = 128
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# dims that are multiples of the group: hidden 128, expert width 128 (down's K), shared width 256
TINY = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(intermediate_size=128, num_local_experts=4, num_experts_per_tok=2, num_key_value_heads=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(intermediate_size=256, moe_intermediate_size=128, shared_expert_intermediate_size=256,
                       num_experts=4, num_experts_per_tok=2, num_key_value_heads=2, norm_topk_prob=False)),
}
ROUTERS = ("block_sparse_moe.gate.weight", "mlp.gate.weight", "shared_expert_gate.weight")


def make_tiny(family, folder, hidden=128, width=128, kv_heads=2):
    """A tiny transformers model of `family` with dims that are multiples of the group, saved to `folder`."""
    import transformers
    config_cls, model_cls, kw = TINY[family]
    kw = {**kw, ("intermediate_size" if family == "mixtral" else "moe_intermediate_size"): width,
          "num_key_value_heads": kv_heads}
    config = getattr(transformers, config_cls)(vocab_size=128, hidden_size=hidden, num_hidden_layers=2,
                                               num_attention_heads=4, max_position_embeddings=64,
                                               bos_token_id=None, eos_token_id=None, pad_token_id=None, **kw)
    torch.manual_seed(7)
    model = getattr(transformers, model_cls)(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.1)
                    + (1.0 if p.dim() == 1 and p.shape[0] == hidden else 0.0))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    pytest.importorskip("transformers")
    made = {}

    def get(family):
        if family not in made:
            made[family] = make_tiny(family, tmp_path_factory.mktemp(f"int4-{family}"))
        return made[family]
    return get


def quantized(name, t):
    """What GPTQ / AWQ releases quantize: every linear of the blocks, not the routers, embeddings or head."""
    return t.dim() == 2 and name.endswith(".weight") and ".layers." in name and "norm" not in name \
        and not name.endswith(ROUTERS)


def quantize_groups(w, sym, min_zero=0):
    """w [N, K] -> codes q [N, K] (0..15), zero points z [N, K/G] and fp16 scales s [N, K/G]."""
    g = w.double().view(w.shape[0], -1, G)
    if sym:
        s = (g.abs().amax(-1) / 7).clamp(min=1e-8).half()
        z = torch.full_like(s, 8, dtype=torch.int64)
    else:
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        s = ((hi - lo) / 15).clamp(min=1e-8).half()
        z = torch.round(-lo / s.double()).long().clamp(min_zero, 15)
    q = (torch.round(g / s.double()[..., None]) + z[..., None]).clamp(0, 15).long()
    return q.view_as(w), z, s


def int32(words):
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def pack_rows(u):
    """[R, C] codes -> [R/8, C] words: row 8j+i in bits 4i of word j (GPTQ's qweight, packed along K)."""
    out = torch.zeros(u.shape[0] // 8, u.shape[1], dtype=torch.int64)
    for i in range(8):
        out |= u[i::8] << (4 * i)
    return int32(out)


def pack_cols(u, order=tuple(range(8))):
    """[R, C] codes -> [R, C/8] words: column 8c + order[i] in bits 4i of word c (GPTQ's qzeros; AWQ with its order)."""
    out = torch.zeros(u.shape[0], u.shape[1] // 8, dtype=torch.int64)
    for i in range(8):
        out |= u[:, order[i]::8] << (4 * i)
    return int32(out)


def write_int4(src, dst, method, sym=False, fmt="gptq", keep=()):
    """src's checkpoint as a GPTQ (v1 / v2) or AWQ release, and its dequantized weights (the oracle) beside it.
    keep: name fragments left unquantized (modules_to_not_convert)."""
    tensors = load_file(src / "model.safetensors")
    packed, deq = {}, {}
    for name, t in tensors.items():
        if not quantized(name, t) or any(k in name for k in keep):
            packed[name] = deq[name] = t
            continue
        base = name[:-len(".weight")]
        q, z, s = quantize_groups(t, sym, min_zero=1 if fmt == "gptq" and method == "gptq" else 0)
        deq[name] = ((q - z.repeat_interleave(G, 1)) * s.float().repeat_interleave(G, 1)).float()
        packed[base + ".scales"] = s.t().contiguous()                                 # [K/G, N] fp16
        if method == "gptq":
            packed[base + ".qweight"] = pack_rows(q.t().contiguous())                   # [K/8, N]
            packed[base + ".qzeros"] = pack_cols(z.t() - (1 if fmt == "gptq" else 0))  # [K/G, N/8], v1: zero - 1
            packed[base + ".g_idx"] = (torch.arange(t.shape[1]) // G).to(torch.int32)
        else:
            packed[base + ".qweight"] = pack_cols(q.t().contiguous(), AWQ_ORDER)        # [K, N/8]
            packed[base + ".qzeros"] = pack_cols(z.t().contiguous(), AWQ_ORDER)         # [K/G, N/8]
    cfg = json.loads((src / "config.json").read_text())
    qc = {"quant_method": "gptq", "bits": 4, "group_size": G, "desc_act": False, "sym": sym,
          "checkpoint_format": fmt} if method == "gptq" else \
        {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": True, "version": "gemm"}
    for kind, out in (("q", packed), ("deq", deq)):
        (dst / kind).mkdir()
        save_file(out, dst / kind / "model.safetensors")
        (dst / kind / "config.json").write_text(json.dumps({**cfg, **({"quantization_config": qc} if kind == "q"
                                                                      else {})}))
    return dst / "q", dst / "deq"


CASES = [("mixtral", "gptq", False, "gptq"), ("qwen2_moe", "gptq", True, "gptq"), ("mixtral", "gptq", False, "gptq_v2"),
         ("qwen2_moe", "awq", False, None), ("mixtral", "awq", False, None)]


@pytest.mark.parametrize("family,method,sym,fmt", CASES)
def test_int4_checkpoint_loads_as_int4_and_matches_its_dequantized_weights(family, method, sym, fmt, tiny_hf, tmp_path):
    q_dir, deq_dir = write_int4(tiny_hf(family), tmp_path, method, sym, fmt or "gptq")
    model, cfg, _ = build_model(str(q_dir), "auto", dtype=torch.float32, settings=RunSettings(device="cpu"))
    oracle, _, _ = build_model(str(deq_dir), "auto", dtype=torch.float32, settings=RunSettings(device="cpu"))
    experts = [m for m in model.modules() if isinstance(m, QuantExperts)]
    assert len(experts) == 2 and all(e.w13.bits == 4 and e.w2.bits == 4 for e in experts)
    assert isinstance(model.layers[0].attn.wqkv.weight, QuantWeight)                 # q/k/v concatenated on rows
    assert isinstance(model.lm_head.weight, torch.Tensor) and isinstance(model.layers[0].ffn.router.weight,
                                                                         torch.nn.Parameter)
    assert (experts[0].w13.zero is None) == sym                                       # all 8: the symmetric path
    fmt = cfg.extra["weight_format"]
    assert {k: fmt[k] for k in ("quant", "bits_per_weight", "lm_head", "source")} == {
        "quant": "int4" if sym else "int4-zp", "bits_per_weight": 4.25 if sym else 4.5, "lm_head": False,
        "source": f"checkpoint ({method})"}
    assert fmt["stored"]["expert_bytes"] == sum(e.w13.nbytes + e.w2.nbytes for e in experts)   # the loaded bytes
    ids = torch.tensor([[3, 9, 27, 81, 5], [1, 2, 4, 8, 16]])
    want = Generator(oracle, 2, 12).append(ids)
    assert rel_err(Generator(model, 2, 12).append(ids), want) < 1e-5
    assert torch.equal(Generator(model, 2, 12).generate(ids, 4), Generator(oracle, 2, 12).generate(ids, 4))
    model.settings.experts = "fused"                                                  # the int4 kernels, interpreted
    assert rel_err(Generator(model, 2, 12).append(ids), want) < 1e-4


@pytest.mark.parametrize("qc,what", [
    ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "bits 8"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 64}, "group_size 64"),
    ({"quant_method": "gptq", "bits": 4, "group_size": -1}, "group_size -1"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}, "desc_act"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"}, "'marlin'"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "'gemv'"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": False}, "without zero points"),
])
def test_int4_configs_outside_minimoes_format_are_refused_in_one_sentence(qc, what):
    hf = {"model_type": "mixtral", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_local_experts": 2, "num_experts_per_tok": 1, "quantization_config": qc}
    with pytest.raises(UnsupportedConfig) as e:
        config_from_hf(hf)
    assert what in str(e.value) and "group size 128" in str(e.value) and "\n" not in str(e.value)


def test_a_packed_tensor_of_the_wrong_dtype_is_named(tiny_hf, tmp_path):
    q_dir, _ = write_int4(tiny_hf("mixtral"), tmp_path, "gptq")
    t = load_file(q_dir / "model.safetensors")
    name = next(n for n in t if n.endswith("o_proj.qweight"))
    t[name] = t[name].to(torch.int64)
    save_file(t, q_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="o_proj.qweight is torch.int64"):
        build_model(str(q_dir), "auto", dtype=torch.float32)


def test_quant_flag_on_an_int4_checkpoint_is_refused(tiny_hf, tmp_path):
    from minimoe.runtime import UsageError, check_settings
    q_dir, _ = write_int4(tiny_hf("mixtral"), tmp_path, "awq")
    cfg = config_from_hf(json.loads((q_dir / "config.json").read_text()))
    with pytest.raises(UsageError, match=r"already quantized \(awq\)"):
        check_settings(RunSettings(device="cpu", quant="int8").resolve(), cfg)


def test_dummy_weights_of_an_int4_config_get_int4_with_zero_points(tiny_hf, tmp_path):
    q_dir, _ = write_int4(tiny_hf("qwen2_moe"), tmp_path, "gptq")
    model, cfg, _ = build_model(str(q_dir), "dummy", dtype=torch.float32)
    assert cfg.extra["weight_format"]["quant"] == "int4-zp"
    w2 = model.layers[0].ffn.experts.w2
    assert w2.bits == 4 and w2.group == G and w2.zero is not None


def test_pre_quantized_checkpoints_pass_the_plan_checks(tiny_hf, tmp_path, monkeypatch):
    """Each rank reads its pieces (test_parallel.py runs them); the settings checks let both kinds through."""
    from minimoe.runtime import check_settings
    q_dir, _ = write_int4(tiny_hf("mixtral"), tmp_path, "gptq")
    cfg = config_from_hf(json.loads((q_dir / "config.json").read_text()))
    fp8 = dataclasses.replace(cfg, extra={**cfg.extra, "quantization_config": {"quant_method": "fp8"}})
    monkeypatch.setenv("WORLD_SIZE", "2")
    for c in (cfg, fp8):
        check_settings(RunSettings(device="cpu", ep=2).resolve(), c)


def test_an_fp8_tensor_parallel_cut_must_fall_on_whole_blocks():
    from minimoe.prequant import _fp8_parts
    shape = {"q": [256, 256], "k": [128, 256]}.__getitem__
    assert _fp8_parts(["q"], shape, (0, 1, 2), 0, 256) == [128]              # rows: 256 -> 128 a rank
    assert _fp8_parts(["q", "k"], shape, None, 0, 256) == [256, 128]          # no cut: the checkpoint's rows
    with pytest.raises(CheckpointError, match="k: --tp 2 would cut its 128x128 scale blocks"):
        _fp8_parts(["q", "k"], shape, (0, 0, 2), 0, 256)                      # k: 64 rows a rank
    with pytest.raises(CheckpointError, match="--tp 2 would cut"):
        _fp8_parts(["q"], shape, (1, 0, 2), 0, 64)                            # inputs 128 -> 64 a rank


def test_a_partially_quantized_checkpoint_is_counted_as_loaded(tiny_hf, tmp_path):
    """Experts left dense (modules_to_not_convert): they load as plain Experts, and the roofline counts their real
    bytes (prequant records the loaded model's counts), not those of a fully int4 model."""
    from minimoe.bench.roofline import count_params
    q_dir, deq_dir = write_int4(tiny_hf("qwen2_moe"), tmp_path, "awq", keep=(".experts.",))
    model, cfg, _ = build_model(str(q_dir), "auto", dtype=torch.float32, settings=RunSettings(device="cpu"))
    assert type(model.layers[0].ffn.experts).__name__ == "Experts" and not any(
        isinstance(m, QuantExperts) for m in model.modules())
    E, I, D = 4, 128, 128
    assert count_params(cfg).stored.per_expert == 3 * I * D * 4                        # fp32, as loaded
    oracle, _, _ = build_model(str(deq_dir), "auto", dtype=torch.float32, settings=RunSettings(device="cpu"))
    ids = torch.tensor([[3, 9, 27, 81, 5]])
    assert rel_err(Generator(model, 1, 8).append(ids), Generator(oracle, 1, 8).append(ids)) < 1e-5


def test_a_quantized_config_over_dense_weights_is_refused(tiny_hf, tmp_path):
    q_dir, deq_dir = write_int4(tiny_hf("mixtral"), tmp_path, "gptq")
    with pytest.raises(CheckpointError, match=r"quantization_config \(gptq\) but the checkpoint holds no quantized"):
        build_model(str(q_dir), str(deq_dir), dtype=torch.float32)


def test_zero_biases_of_old_exports_are_skipped_and_real_ones_named(tiny_hf, tmp_path):
    q_dir, deq_dir = write_int4(tiny_hf("mixtral"), tmp_path, "gptq")
    t = load_file(q_dir / "model.safetensors")
    bases = [n[:-len(".qweight")] for n in t if n.endswith(".qweight")]
    t.update({b + ".bias": torch.zeros(t[b + ".scales"].shape[1], dtype=torch.float16) for b in bases})
    save_file(t, q_dir / "model.safetensors")
    model, _, _ = build_model(str(q_dir), "auto", dtype=torch.float32)              # AutoGPTQ <= 0.7: all zero
    t[bases[0] + ".bias"][0] = 1.0
    save_file(t, q_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected: " + bases[0] + ".bias"):
        build_model(str(q_dir), "auto", dtype=torch.float32)


def test_act_order_groups_are_caught_at_load(tiny_hf, tmp_path):
    q_dir, _ = write_int4(tiny_hf("mixtral"), tmp_path, "gptq")
    t = load_file(q_dir / "model.safetensors")
    name = next(n for n in t if n.endswith("o_proj.g_idx"))
    t[name][:8] = 1                                                                  # 8 inputs in another group
    save_file(t, q_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="o_proj.g_idx is not k // 128"):
        build_model(str(q_dir), "auto", dtype=torch.float32)


@pytest.mark.parametrize("qc, offset", [({"checkpoint_format": "gptq_v2"}, 0), ({"format": "gptq_v2"}, 0),
                                        ({"checkpoint_format": None}, 1), ({}, 1)])
def test_gptq_format_keys(qc, offset):
    from minimoe.prequant_int4 import scheme, unsupported
    full = {"quant_method": "gptq", "bits": 4, "group_size": 128, **qc}
    assert unsupported(full) is None and scheme(full).zero_offset == offset


def test_a_fused_module_with_mixed_formats_is_named(tiny_hf, tmp_path):
    q_dir, _ = write_int4(tiny_hf("mixtral"), tmp_path, "gptq", keep=("q_proj",))
    with pytest.raises(CheckpointError, match=r"attn.wqkv: .*q_proj unquantized but .*k_proj.* quantized"):
        build_model(str(q_dir), "auto", dtype=torch.float32)
