"""Guards the loader: every user-facing error names what is wrong (unknown model or model_type, missing / mis-shaped / unexpected tensors, absent directories, uncached hub ids), sharded and in-memory checkpoints load like single files, DeepSeek-V3's MTP layer is skipped, and dummy weights are finite and seeded."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minimoe import cards
from minimoe.families import FAMILIES
from minimoe.loader import CheckpointError, StateDict, build_meta, build_model, load_weights


def _load(folder, **kw):
    return build_model(str(folder), "auto", dtype=torch.float32, **kw)


def _state(net) -> dict:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def _assert_same_weights(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture
def edit_checkpoint(hf_checkpoint, tmp_path):
    """family, edit(tensors dict) -> a copy of that family's tiny checkpoint with the edit applied."""
    def make(family: str, edit):
        src, _ = hf_checkpoint(family)
        dst = tmp_path / f"{family}-edited"
        dst.mkdir()
        shutil.copy(src / "config.json", dst / "config.json")
        tensors = load_file(str(src / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(dst / "model.safetensors"))
        return dst
    return make


# ---- resolving --model ------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_cards():
    with pytest.raises(CheckpointError) as e:
        build_model("no-such-model", "dummy")
    msg = str(e.value)
    assert "unknown model 'no-such-model'" in msg
    for name in cards.card_names():
        assert name in msg
    assert "olmoe-tiny" in msg and "DeepSeek-V3" in msg


def test_a_near_miss_names_the_close_card_and_not_the_list():
    """A typo gets the suggestion right after the name and the cards' folder, not the long list of cards and aliases."""
    with pytest.raises(CheckpointError) as e:
        build_model("olmoe-tinyy", "dummy")
    msg = str(e.value)
    assert msg.startswith("unknown model 'olmoe-tinyy' (did you mean 'olmoe-tiny'?): not a model card")
    assert str(cards.cards_dir()) in msg and "DeepSeek-V3" not in msg and len(msg) < 300


def test_a_path_that_is_not_a_directory_says_so(tmp_path):
    """A --model that looks like a path is not sent to the hub or answered with the card list."""
    for missing in ("./no-such-ckpt", str(tmp_path / "absent"), "~/no-such-ckpt-minimoe"):
        with pytest.raises(CheckpointError, match=f"{missing}: no such directory"):
            build_model(missing, "dummy")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        build_model(str(tmp_path / "file.txt"), "dummy")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="a file, not a directory: pass its folder"):   # its config.json
        build_model(str(tmp_path / "ckpt" / "config.json"), "dummy")


def test_unknown_model_type_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(ValueError) as e:
        build_model(str(tmp_path), "dummy")
    msg = str(e.value)
    assert "unsupported model_type 'gpt2'" in msg
    for family in FAMILIES:
        assert family in msg


def test_config_missing_a_field_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    with pytest.raises(ValueError, match="lacks the field 'num_attention_heads'"):
        build_model(str(tmp_path), "dummy")


def test_directory_without_config_json(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        build_model(str(tmp_path), "dummy")


@pytest.mark.parametrize("change,message", [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"quantization_config": {"quant_method": "fp8"}}, "pre-quantized checkpoints"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope scaling type 'linear' is not supported"),
])
def test_unsupported_config_features_are_refused(tmp_path, change, message):
    card = cards.load_card("olmoe-tiny")
    (tmp_path / "config.json").write_text(json.dumps({**card, **change}))
    with pytest.raises(NotImplementedError, match=message):
        build_model(str(tmp_path), "dummy")


def test_missing_weights_directory():
    with pytest.raises(CheckpointError, match="weights directory /no/such/dir does not exist"):
        build_model("olmoe-tiny", "/no/such/dir")


def test_weights_directory_without_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors files in"):
        build_model("olmoe-tiny", str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")            # never opened: pickles can run code
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a pickle checkpoint, which minimoe never loads"):
        build_model("olmoe-tiny", str(tmp_path))


def test_uncached_hub_id_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))   # read at import otherwise
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)                  # so "minimoe-tests/..." is not a local path by accident
    with pytest.raises(CheckpointError) as e:
        build_model("minimoe-tests/never-cached", "auto")
    assert str(e.value) == ("minimoe-tests/never-cached is not in the local Hugging Face cache and "
                            "HF_HUB_OFFLINE is set")


# ---- matching checkpoint tensors ----------------------------------------------------------------------


def test_missing_tensor_is_named(edit_checkpoint):
    folder = edit_checkpoint("mixtral", lambda t: t.pop("model.layers.1.self_attn.q_proj.weight"))
    with pytest.raises(CheckpointError) as e:
        _load(folder)
    msg = str(e.value)
    assert "(1 missing, 0 mis-shaped," in msg
    assert "missing: model.layers.1.self_attn.q_proj.weight" in msg


def test_many_missing_tensors_are_counted_and_a_few_named(edit_checkpoint):
    """A checkpoint of another model used to print up to 150 names; now 5 of each kind and how many more."""
    def drop_layer_1(t):
        for name in [n for n in t if n.startswith("model.layers.1.")]:
            t.pop(name)
    with pytest.raises(CheckpointError) as e:
        _load(edit_checkpoint("qwen3_moe", drop_layer_1))
    lines = str(e.value).splitlines()
    n = int(lines[0].split("(")[1].split(" missing")[0])
    assert n > 5 and sum(line.strip().startswith("missing: ") for line in lines) == 5
    assert lines[-1].strip() == f"... and {n - 5} more missing"


@pytest.mark.parametrize("family,drop", [("mixtral", "model.layers.1.self_attn.q_proj.weight"),
                                         ("qwen3_moe", "model.layers.2.mlp.experts.5.up_proj.weight")])
def test_missing_tensor_does_not_make_its_siblings_unexpected(edit_checkpoint, family, drop):
    with pytest.raises(CheckpointError) as e:
        _load(edit_checkpoint(family, lambda t: t.pop(drop)))
    assert "(1 missing, 0 mis-shaped, 0 unexpected)" in str(e.value)


def test_missing_expert_tensor_is_named(edit_checkpoint):
    folder = edit_checkpoint("qwen3_moe", lambda t: t.pop("model.layers.2.mlp.experts.5.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing: model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight"):
        _load(folder)


def test_misshaped_tensor_names_it_and_both_shapes(edit_checkpoint):
    def shrink(t):
        t["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(64, 48)
    with pytest.raises(CheckpointError) as e:
        _load(edit_checkpoint("olmoe", shrink))
    msg = str(e.value)
    assert "(0 missing, 1 mis-shaped, 0 unexpected)" in msg
    assert "model.layers.0.self_attn.o_proj.weight [64, 48]" in msg
    assert "expected [64, 64]" in msg and "checkpoint gives [64, 48]" in msg


def test_misshaped_fused_part_names_it(edit_checkpoint):
    """k_proj is one of three parts of minimoe's wqkv: the message still names the Hub tensor and its shape."""
    def shrink(t):
        t["model.layers.2.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    with pytest.raises(CheckpointError) as e:
        _load(edit_checkpoint("mixtral", shrink))
    msg = str(e.value)
    assert "mis-shaped: layers.2.attn.wqkv.weight: expected [128, 64], checkpoint gives [112, 64]" in msg
    assert "model.layers.2.self_attn.k_proj.weight [16, 64]" in msg


def test_misshaped_expert_tensor_is_named(edit_checkpoint):
    def shrink(t):
        t["model.layers.0.block_sparse_moe.experts.4.w3.weight"] = torch.zeros(24, 64)
    with pytest.raises(CheckpointError) as e:
        _load(edit_checkpoint("mixtral", shrink))
    msg = str(e.value)
    assert "mis-shaped: layers.0.ffn.experts.w13" in msg                     # this part holds today
    assert "model.layers.0.block_sparse_moe.experts.4.w3.weight [24, 64]" in msg


def test_unexpected_tensor_is_named(edit_checkpoint):
    def add(t):
        t["model.layers.0.self_attn.extra_proj.weight"] = torch.zeros(4, 4)
    with pytest.raises(CheckpointError) as e:
        _load(edit_checkpoint("qwen2_moe", add))
    msg = str(e.value)
    assert "(0 missing, 0 mis-shaped, 1 unexpected)" in msg
    assert "unexpected: model.layers.0.self_attn.extra_proj.weight" in msg


def test_all_problems_reported_together(edit_checkpoint):
    def break_three_ways(t):
        t.pop("model.norm.weight")
        t["model.layers.1.input_layernorm.weight"] = torch.ones(63)
        t["model.bogus"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        _load(edit_checkpoint("deepseek_v2", break_three_ways))
    msg = str(e.value)
    assert "(1 missing, 1 mis-shaped, 1 unexpected)" in msg
    assert "missing: model.norm.weight" in msg and "unexpected: model.bogus" in msg
    assert "model.layers.1.input_layernorm.weight [63]" in msg


def test_fp8_checkpoint_is_refused_by_name(edit_checkpoint):
    def add_scale(t):
        t["model.layers.1.self_attn.o_proj.weight_scale_inv"] = torch.ones(1, 1)
    with pytest.raises(CheckpointError, match="FP8 block-quantized weights"):
        _load(edit_checkpoint("deepseek_v3", add_scale))


def test_deepseek_v3_mtp_layer_is_ignored(edit_checkpoint, hf_checkpoint):
    """V3 checkpoints carry model.layers.{n_layers}.* (multi-token prediction): skipped, not 'unexpected'."""
    n = 3
    def add_mtp(t):
        D = 64
        t.update({f"model.layers.{n}.enorm.weight": torch.ones(D), f"model.layers.{n}.hnorm.weight": torch.ones(D),
                  f"model.layers.{n}.eh_proj.weight": torch.zeros(D, 2 * D),
                  f"model.layers.{n}.shared_head.norm.weight": torch.ones(D),
                  f"model.layers.{n}.self_attn.q_a_proj.weight": torch.zeros(24, D),
                  f"model.layers.{n}.mlp.experts.0.gate_proj.weight": torch.zeros(32, D),
                  f"model.layers.{n}.mlp.gate.e_score_correction_bias": torch.zeros(8)})
    folder = edit_checkpoint("deepseek_v3", add_mtp)
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == n
    net, cfg, _ = _load(folder)
    assert cfg.n_layers == n and len(net.layers) == n
    _assert_same_weights(net, _load(hf_checkpoint("deepseek_v3")[0])[0])


def test_extra_layer_of_a_non_mtp_family_is_unexpected(edit_checkpoint):
    def add_layer(t):
        t["model.layers.3.self_attn.q_proj.weight"] = torch.zeros(64, 64)
    with pytest.raises(CheckpointError, match=r"unexpected: model\.layers\.3\.self_attn\.q_proj\.weight"):
        _load(edit_checkpoint("mixtral", add_layer))


# ---- alternative sources -----------------------------------------------------------------------------


def test_sharded_checkpoint_loads_like_the_single_file(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("qwen2_moe")
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(tmp_path / fname))
        weight_map.update(dict.fromkeys(part, fname))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copy(src / "config.json", tmp_path / "config.json")
    _assert_same_weights(_load(tmp_path)[0], _load(src)[0])


def test_bf16_checkpoint_converts_to_the_requested_dtype(edit_checkpoint, hf_checkpoint):
    def to_bf16(t):
        for name in t:
            t[name] = t[name].to(torch.bfloat16)
    net, _, _ = _load(edit_checkpoint("deepseek_v3", to_bf16))
    ref, _, _ = _load(hf_checkpoint("deepseek_v3")[0])
    got, want = _state(net), _state(ref)
    for name in want:
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], want[name].to(torch.bfloat16).float()), name


def test_index_naming_a_missing_shard(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("olmoe")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    names = load_file(str(src / "model.safetensors")).keys()
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}))
    with pytest.raises(CheckpointError, match="model-00001-of-00001.safetensors, named by the index for .* is missing"):
        _load(tmp_path)


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "deepseek_v3"])
def test_transformers_in_memory_layout_loads_like_the_hub_files(family, hf_checkpoint):
    """transformers v5 fuses experts in memory (mlp.experts.gate_up_proj): the recipes' second alternative."""
    folder, hf = hf_checkpoint(family)
    from_files, cfg, _ = _load(folder)
    state = dict(hf.state_dict())
    assert any(n.endswith("experts.gate_up_proj") for n in state)
    net = build_meta(cfg, None, torch.float32).to_empty(device="cpu")
    load_weights(net, StateDict(state))
    _assert_same_weights(net, from_files)


def test_tied_transformers_state_dict_loads(hf_checkpoint):
    folder, hf = hf_checkpoint("mixtral")
    from_files, cfg, _ = _load(folder)
    assert cfg.tie_word_embeddings
    net = build_meta(cfg, None, torch.float32).to_empty(device="cpu")
    load_weights(net, StateDict(dict(hf.state_dict())))
    _assert_same_weights(net, from_files)


# ---- dummy weights ---------------------------------------------------------------------------------------


def test_dummy_weights_are_finite_and_seeded():
    a, _, folder = build_model("deepseek-v3-tiny", "dummy", dtype=torch.float32, seed=0)
    b, _, _ = build_model("deepseek-v3-tiny", "dummy", dtype=torch.float32, seed=0)
    c, _, _ = build_model("deepseek-v3-tiny", "dummy", dtype=torch.float32, seed=1)
    assert folder is None
    _assert_same_weights(a, b)
    sa, sc = _state(a), _state(c)
    assert all(torch.isfinite(t).all() for t in sa.values())
    assert not torch.equal(sa["layers.1.ffn.experts.w13"], sc["layers.1.ffn.experts.w13"])
    assert torch.equal(sa["norm.weight"], torch.ones_like(sa["norm.weight"]))
    assert 0.015 < sa["layers.1.ffn.experts.w13"].std().item() < 0.025          # N(0, 0.02)
    assert sa["layers.1.ffn.router.weight"].dtype == torch.float32


def test_dummy_weights_keep_the_router_fp32_in_bf16():
    net, _, _ = build_model("deepseek-v3-tiny", "dummy", dtype=torch.bfloat16)
    assert net.layers[1].ffn.router.weight.dtype == torch.float32        # DeepSeek's gate stays fp32
    assert net.layers[1].ffn.router.bias.dtype == torch.float32
    assert net.layers[1].ffn.experts.w13.dtype == torch.bfloat16


# ---- untrusted files: damaged safetensors, stray files ------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_safetensors"])
def test_damaged_safetensors_is_one_clear_error(hf_checkpoint, tmp_path, damage):
    src, _ = hf_checkpoint("olmoe")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    data = (src / "model.safetensors").read_bytes()
    blob = {"empty": b"", "truncated": data[: len(data) // 2], "not_safetensors": b"PK\x03\x04" * 100}[damage]
    (tmp_path / "model.safetensors").write_bytes(blob)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file|cannot read"):
        _load(tmp_path)


def test_stray_safetensors_beside_model_safetensors_is_ignored(hf_checkpoint, tmp_path):
    """transformers loads model.safetensors and nothing else; so does minimoe (a stray file never overrides)."""
    src, _ = hf_checkpoint("mixtral")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    shutil.copy(src / "model.safetensors", tmp_path / "model.safetensors")
    stray = {n: torch.zeros_like(t) for n, t in load_file(str(src / "model.safetensors")).items()}
    save_file(stray, str(tmp_path / "model_old.safetensors"))
    _assert_same_weights(_load(tmp_path)[0], _load(src)[0])


def test_duplicate_tensor_names_across_files_are_refused(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("mixtral")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    tensors = load_file(str(src / "model.safetensors"))
    save_file(tensors, str(tmp_path / "a.safetensors"))
    save_file({"model.norm.weight": tensors["model.norm.weight"]}, str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight is in both a\.safetensors and b\.safetensors"):
        _load(tmp_path)


def test_directory_without_safetensors_needs_dummy_asked_for(hf_checkpoint, tmp_path):
    src, _ = hf_checkpoint("olmoe")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no \\*.safetensors files in"):
        _load(tmp_path)
    net, _, folder = build_model(str(tmp_path), "dummy", dtype=torch.float32)
    assert folder is None


def test_check_fits_refuses_with_numbers_and_a_hint_only_where_it_helps():
    """A model too big for the RAM is one MemoryError line; the hint (fp32 -> bf16 halves the bytes) is given only
    when half would fit."""
    from minimoe.loader import check_fits, ram_bytes
    if ram_bytes() is None:
        pytest.skip("this platform reports no free RAM")
    free = ram_bytes()[0]
    check_fits(free // 4, torch.device("cpu"), hint="HINT")                  # fits: nothing raised
    with pytest.raises(MemoryError, match=r"the weights need .* GiB but this machine's RAM has .*; HINT$"):
        check_fits(int(1.5 * free), torch.device("cpu"), hint="HINT")       # half would fit
    with pytest.raises(MemoryError) as err:
        check_fits(4 * free, torch.device("cpu"), hint="HINT")              # half would not
    assert "HINT" not in str(err.value)
