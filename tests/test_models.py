"""Model geometry, sizes and lookup, checked against the article's figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttc import models
from ttc.models import (
    BUILTIN_MODELS,
    ModelError,
    check_context,
    compute_dtype,
    describe,
    dtype_bytes,
    estimate_params,
    kv_geometry,
    resolve_model,
)

R1_DISTILL_70B = "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"
GB = 1e9


def test_dtype_bytes() -> None:
    assert dtype_bytes("fp16") == dtype_bytes("bf16") == dtype_bytes("torch.bfloat16") == 2
    assert dtype_bytes("fp8") == dtype_bytes("FP8_E4M3") == 1
    assert dtype_bytes("float32") == 4
    assert dtype_bytes("auto", auto="float32") == 4
    assert dtype_bytes("int4") == 0.5
    assert dtype_bytes("auto", auto="float64") == 8  # a model loaded in double precision (transformers backend)
    with pytest.raises(ValueError, match="allowed: auto, float64"):
        dtype_bytes("fp12")
    with pytest.raises(ValueError, match="'auto' \\(the model's 'complex64'\\)"):
        dtype_bytes("auto", auto="complex64")


def test_r1_distill_70b_kv_matches_article() -> None:
    fp16 = resolve_model(R1_DISTILL_70B).geometry("fp16")
    assert fp16.bytes_per_token == 327_680
    assert round(10_000 * fp16.bytes_per_token / GB, 2) == 3.28
    assert round(30_000 * fp16.bytes_per_token / GB, 1) == 9.8
    assert 4 * 30_000 * fp16.bytes_per_token / GB == pytest.approx(39, abs=0.5)
    fp8 = resolve_model(R1_DISTILL_70B).geometry("fp8")
    assert fp8.bytes_per_token == fp16.bytes_per_token / 2


def test_deepseek_r1_mla_matches_article() -> None:
    geom = resolve_model("deepseek-ai/DeepSeek-R1").geometry("bf16")
    assert geom.mla_dim == 512 + 64
    assert geom.bytes_per_token == 61 * 576 * 2 == 70_272
    assert round(30_000 * geom.bytes_per_token / GB, 1) == 2.1
    assert resolve_model("DeepSeek-V3").geometry("fp8").bytes_per_token == 70_272 / 2


@pytest.mark.parametrize(
    ("name", "bytes_per_token"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", 131_072),
        ("meta-llama/Llama-3.1-70B-Instruct", 327_680),
        ("Qwen/Qwen2.5-7B-Instruct", 57_344),
        ("Qwen/Qwen2.5-Math-1.5B-Instruct", 28_672),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 57_344),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", 262_144),
        ("Qwen/QwQ-32B", 262_144),
    ],
)
def test_table_kv_bytes(name: str, bytes_per_token: int) -> None:
    assert resolve_model(name).geometry("bf16").bytes_per_token == bytes_per_token


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_estimate_agrees_with_published_counts(name: str) -> None:
    config, published, active = BUILTIN_MODELS[name]
    total, est_active = estimate_params(config)
    assert total == pytest.approx(published, rel=0.01)
    assert est_active == pytest.approx(active or published, rel=0.02)


def test_kv_geometry_reads_hf_configs() -> None:
    from transformers import LlamaConfig

    gqa = LlamaConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=8, num_key_value_heads=2)
    assert kv_geometry(gqa, "fp16").model_dump() == {
        "num_layers": 4, "num_kv_heads": 2, "head_dim": 32, "dtype_bytes": 2.0, "mla_dim": None,
    }  # fmt: skip
    # No num_key_value_heads: plain multi-head attention; explicit head_dim wins over hidden/heads.
    mha = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "torch_dtype": "float32"}
    assert kv_geometry(mha).num_kv_heads == 4
    assert kv_geometry(mha).dtype_bytes == 4  # auto: the config's own dtype
    assert kv_geometry(mha | {"head_dim": 128}, "bf16").bytes_per_token == 2 * 2 * 4 * 128 * 2
    nested = {"model_type": "vlm", "text_config": mha}
    assert kv_geometry(nested, "fp8").bytes_per_token == 2 * 2 * 4 * 16 * 1


@pytest.mark.parametrize(
    ("config", "layers", "kv_heads", "head_dim"),
    [
        ({"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768}, 12, 12, 64),
        ({"model_type": "bloom", "n_layer": 30, "n_head": 32, "hidden_size": 4096}, 30, 32, 128),
        ({"model_type": "mpt", "n_layers": 32, "n_heads": 32, "d_model": 4096}, 32, 32, 128),
        ({"model_type": "gpt_bigcode", "n_layer": 40, "n_head": 48, "n_embd": 6144, "multi_query": True}, 40, 1, 128),
        # Falcon-7B: multi-query; Falcon-40B: its new decoder architecture's 8 KV heads
        ({"model_type": "falcon", "num_hidden_layers": 32, "num_attention_heads": 71, "hidden_size": 4544,
          "multi_query": True, "new_decoder_architecture": False}, 32, 1, 64),
        ({"model_type": "falcon", "num_hidden_layers": 60, "num_attention_heads": 128, "hidden_size": 8192,
          "multi_query": True, "new_decoder_architecture": True, "num_kv_heads": 8}, 60, 8, 64),
    ],
)
def test_kv_geometry_reads_other_families_names(config: dict, layers: int, kv_heads: int, head_dim: int) -> None:
    kv = kv_geometry(config, "bf16")
    assert (kv.num_layers, kv.num_kv_heads, kv.head_dim) == (layers, kv_heads, head_dim)


def test_a_context_past_the_positions_is_refused_unless_rotary_scaling_stretches_them(tmp_path: Path) -> None:
    from ttc.reference import POLICY_PATH

    assert check_context(str(POLICY_PATH), 1024) == 1024
    with pytest.raises(ModelError, match="max_model_len=4096 exceeds the model's 1024 positions"):
        check_context(str(POLICY_PATH), 4096)
    config = json.loads((POLICY_PATH / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                 "original_max_position_embeddings": 1024}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert check_context(str(tmp_path), 4096) == 1024  # YaRN: the engine decides


def test_model_dtypes_take_their_aliases_and_nothing_else() -> None:
    assert [compute_dtype(d) for d in ("bf16", "torch.float16", "half", "auto")] == [
        "bfloat16", "float16", "float16", "auto",
    ]
    with pytest.raises(ModelError, match="unknown model dtype 'nn'"):
        compute_dtype("nn")


def test_a_config_without_a_transformers_shape_is_named_in_one_line() -> None:
    with pytest.raises(ModelError, match=r"config \(resnet\) has no num_hidden_layers .*num_attention_heads"):
        kv_geometry({"model_type": "resnet", "hidden_size": 64})


def test_fp8_weights_keep_embeddings_16_bit() -> None:
    info = resolve_model(R1_DISTILL_70B)
    embed = 2 * 128_256 * 8192
    assert info.embedding_params == embed
    assert info.weight_bytes("bf16") == pytest.approx(141.2e9)
    assert info.weight_bytes("fp8") == pytest.approx(70.6e9 - embed + 2 * embed)
    assert resolve_model("deepseek-r1").weight_dtype == "fp8"  # the checkpoint ships fp8


def test_resolve_by_bare_name_any_case() -> None:
    assert resolve_model("qwq-32b").name == "Qwen/QwQ-32B"
    assert resolve_model("QwQ-32B").source == "table"


def test_resolve_local_dir_estimates_params(tmp_path: Path) -> None:
    cfg = {
        "num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 40, "tie_word_embeddings": True, "torch_dtype": "float32",
        "max_position_embeddings": 256,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    info = resolve_model(tmp_path)
    assert info.source == "local" and info.params_estimated
    assert info.params == 40 * 128 + 4 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 384)
    assert info.geometry().bytes_per_token == 2 * 4 * 2 * 32 * 4
    assert "estimated" in describe(info)
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(tmp_path / "missing")


def test_unknown_model_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(models, "_hub_config", offline)
    with pytest.raises(ModelError) as err:
        resolve_model("someone/unknown-model")
    message = str(err.value)
    assert "\n" not in message
    assert "someone/unknown-model" in message and R1_DISTILL_70B in message and "couldn't connect" in message
