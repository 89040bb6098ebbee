"""Guards pre-quantized checkpoints: fp8 with 128x128 block scales (weight_scale_inv + quantization_config) load as
stored and compute what their dequantized weights compute; every other quantization_config (GPTQ / AWQ int4:
test_quant_prequant_int4.py) is refused by name."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import rel_err
from minimoe import qweights as Q
from minimoe.config_fields import UnsupportedConfig
from minimoe.families import config_from_hf
from minimoe.generate import Generator
from minimoe.loader import CheckpointError, build_model
from minimoe.settings import RunSettings

FP8_CONFIG = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic", "fmt": "e4m3"}


def quantized(name: str, t: torch.Tensor) -> bool:
    """What DeepSeek-V3's release stores in fp8: every linear but the router, embeddings and the head."""
    return t.dim() == 2 and name.endswith(".weight") and not any(
        k in name for k in ("embed_tokens", "lm_head", "mlp.gate.weight", "block_sparse_moe.gate.weight", "norm"))


def write_fp8_checkpoint(src, dst, with_config=True):
    """The hf checkpoint in src as DeepSeek-V3 ships its weights (fp8 codes + weight_scale_inv), and the same
    weights dequantized in fp32 beside it (the oracle), at dst / "fp8" and dst / "deq"."""
    tensors = load_file(src / "model.safetensors")
    fp8, deq = {}, {}
    for name, t in tensors.items():
        if quantized(name, t):
            q = Q.quantize_fp8(t.float(), block=128)
            fp8[name], fp8[name + "_scale_inv"] = q.qdata.contiguous(), q.scale.contiguous()
            deq[name] = q.dequantize()[0]
        else:
            fp8[name] = deq[name] = t
    cfg = json.loads((src / "config.json").read_text())
    for kind, tensors_out in (("fp8", fp8), ("deq", deq)):
        (dst / kind).mkdir()
        save_file(tensors_out, dst / kind / "model.safetensors")
        extra = {"quantization_config": FP8_CONFIG} if kind == "fp8" and with_config else {}
        (dst / kind / "config.json").write_text(json.dumps({**cfg, **extra}))
    return dst / "fp8", dst / "deq"


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen3_moe"])
def test_fp8_block_checkpoint_loads_as_stored_and_matches_its_dequantized_weights(family, hf_checkpoint, tmp_path,
                                                                                    monkeypatch):
    src, _ = hf_checkpoint(family)
    fp8_dir, deq_dir = write_fp8_checkpoint(src, tmp_path)
    s = RunSettings(device="cpu")
    model, cfg, _ = build_model(str(fp8_dir), "auto", dtype=torch.float32, settings=s)
    oracle, _, _ = build_model(str(deq_dir), "auto", dtype=torch.float32, settings=RunSettings(device="cpu"))
    experts = next(m for m in model.modules() if type(m).__name__ == "QuantExperts")
    assert experts.w13.qdata.dtype == torch.float8_e4m3fn and experts.w13.describe().startswith("fp8")
    assert cfg.extra["weight_format"]["quant"] == "fp8-block"
    attn = model.layers[1].attn
    first = attn.wq_b if family == "deepseek_v3" else attn.wqkv
    assert first.weight.qdata.dtype == torch.float8_e4m3fn
    if family == "qwen3_moe":   # q/k/v rows (96, 48, 48) do not start on 128-row blocks: scales spread per row
        assert first.weight.row_block == 1 and first.weight.scale.shape == (192, 1)
    ids = torch.tensor([[3, 9, 27, 81]])                 # 4 tokens: decode-sized GEMMs keep activations as they are
    got = Generator(model, 1, 8).append(ids)
    want = Generator(oracle, 1, 8).append(ids)
    assert rel_err(got, want) < 1e-4
    # prefill sizes quantize activations too (W8A8, tested in test_quant_kernels / _formats); with that off, the
    # loaded codes and block scales must reproduce the dequantized model at every size
    monkeypatch.setitem(Q.WEIGHT_ONLY_MAX_T, 0, 10 ** 6)
    more = torch.arange(80).view(2, 40) % 100                  # 80 rows: past WEIGHT_ONLY_MAX_T
    assert rel_err(Generator(model, 2, 48).append(more), Generator(oracle, 2, 48).append(more)) < 1e-4


@pytest.mark.parametrize("qc,what", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}, "desc_act"),   # int4 kinds accepted:
    ({"quant_method": "awq", "bits": 4, "group_size": 32}, "group_size 32"),                # test_quant_prequant_int4
    ({"quant_method": "compressed-tensors", "config_groups": {}}, "'compressed-tensors'"),
    ({"quant_method": "fp8", "weight_block_size": [64, 64]}, "[64, 64]"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes'"),
])
def test_other_quantization_configs_are_refused_naming_what_loads(qc, what):
    hf = {"model_type": "mixtral", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_local_experts": 2, "num_experts_per_tok": 1, "quantization_config": qc}
    with pytest.raises(UnsupportedConfig) as e:
        config_from_hf(hf)
    assert what in str(e.value) and "128x128 block scales" in str(e.value) and "--quant" in str(e.value)


def test_scales_without_a_quantization_config_are_refused(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("qwen3_moe")
    fp8_dir, _ = write_fp8_checkpoint(src, tmp_path, with_config=False)
    with pytest.raises(CheckpointError, match="no quantization_config"):
        build_model(str(fp8_dir), "auto", dtype=torch.float32)


def test_dummy_weights_of_an_fp8_config_are_made_fp8_too(tmp_path, hf_checkpoint):
    src, _ = hf_checkpoint("qwen3_moe")
    cfg = json.loads((src / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "quantization_config": FP8_CONFIG}))
    model, cfg, _ = build_model(str(tmp_path), "dummy", dtype=torch.float32)
    assert cfg.extra["weight_format"]["quant"] == "fp8-block"
    assert model.layers[0].ffn.experts.w2.qdata.dtype == torch.float8_e4m3fn
    shutil.rmtree(tmp_path)
