"""Model geometry and size: what a token of KV cache and a copy of the weights cost.

``kv_geometry`` reads any Hugging Face config (the backends use it too);
``resolve_model`` finds a model in the built-in table, a local checkpoint
directory, or on the hub, in that order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from ttc.types import KVGeometry

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class ModelError(ValueError):
    """A model that cannot be resolved or read; the message is one line."""


# Bytes per element; 4-bit formats ignore their per-group scales (a few percent).
_DTYPE_BYTES: dict[str, float] = {
    "float64": 8, "fp64": 8, "double": 8,
    "float32": 4, "fp32": 4, "float": 4,
    "float16": 2, "fp16": 2, "half": 2,
    "bfloat16": 2, "bf16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "int8": 1,
    "int4": 0.5, "fp4": 0.5, "nvfp4": 0.5, "mxfp4": 0.5, "awq": 0.5, "gptq": 0.5,
}  # fmt: skip


# The dtypes a model computes in, by the name every engine and torch knows, and their aliases.
_COMPUTE_DTYPES = {
    "auto": "auto", "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64", "fp64": "float64", "double": "float64",
}  # fmt: skip


def compute_dtype(name: str) -> str:
    """A model's compute dtype by its canonical name (``bf16`` -> ``bfloat16``)."""
    key = str(name).lower().removeprefix("torch.")
    if key not in _COMPUTE_DTYPES:
        raise ModelError(f"unknown model dtype {name!r}; allowed: {', '.join(_COMPUTE_DTYPES)}")
    return _COMPUTE_DTYPES[key]


def check_context(model: str, max_model_len: int | None) -> int | None:
    """The model's positions, after refusing a longer context (as vLLM does), from its config
    alone: before any engine loads the weights. Where rotary scaling stretches the positions
    (YaRN, linear, dynamic), or ``VLLM_ALLOW_LONG_MAX_MODEL_LEN`` is set, the engine decides."""
    import os

    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model).get_text_config()
    positions = getattr(cfg, "max_position_embeddings", None)
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    scaled = isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (None, "default")
    if scaled or os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        return positions
    if max_model_len and positions and max_model_len > positions:
        raise ModelError(f"max_model_len={max_model_len} exceeds the model's {positions} positions")
    return positions


def dtype_bytes(name: str, auto: str = "bfloat16") -> float:
    """Bytes per element of a dtype name; ``auto`` means the model's own dtype (``auto``)."""
    key = str(name).lower().removeprefix("torch.")
    if key == "auto":
        key = str(auto).lower().removeprefix("torch.")
    if key not in _DTYPE_BYTES:
        what = f"{name!r}" if key == str(name).lower().removeprefix("torch.") else f"{name!r} (the model's {key!r})"
        raise ValueError(f"unknown dtype {what}; allowed: auto, {', '.join(_DTYPE_BYTES)}")
    return float(_DTYPE_BYTES[key])


# Other families' names for the fields ttc reads (GPT-2, BLOOM, MPT, GPTBigCode, Falcon).
_ALIASES: dict[str, tuple[str, ...]] = {
    "num_hidden_layers": ("n_layer", "n_layers", "num_layers"),
    "num_attention_heads": ("n_head", "n_heads", "num_heads"),
    "hidden_size": ("n_embd", "d_model"),
    "num_key_value_heads": ("num_kv_heads", "n_head_kv"),
    "intermediate_size": ("n_inner",),
}
_REQUIRED = ("num_hidden_layers", "num_attention_heads", "hidden_size")


def _as_dict(config: PretrainedConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config's fields under the Llama family's names, checked for what sizing needs."""
    cfg = dict(config) if isinstance(config, Mapping) else config.to_dict()
    # Multimodal checkpoints keep the language model's shape one level down.
    text = cfg.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" not in cfg:
        cfg = {**cfg, **text}
    for name, others in _ALIASES.items():
        if cfg.get(name) is None:
            cfg[name] = next((cfg[o] for o in others if cfg.get(o) is not None), None)
    # Multi-query attention keeps one KV head (GPTBigCode; Falcon before its new decoder architecture).
    if cfg.get("multi_query") and not cfg.get("new_decoder_architecture"):
        cfg["num_key_value_heads"] = 1
    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing:
        kind = cfg.get("model_type") or "unknown type"
        names = ", ".join(f"{k} ({'/'.join(_ALIASES[k])})" for k in missing)
        raise ModelError(f"the model's config ({kind}) has no {names}: not a transformer ttc can size")
    return cfg


def _config_dtype(cfg: Mapping[str, Any]) -> str:
    # transformers 5 writes ``dtype``; older checkpoints carry ``torch_dtype``.
    return str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16").removeprefix("torch.")


def kv_geometry(config: PretrainedConfig | Mapping[str, Any], kv_dtype: str = "auto") -> KVGeometry:
    """KV-cache shape of a model from its HF config (a ``PretrainedConfig`` or a dict)."""
    cfg = _as_dict(config)
    layers = int(cfg["num_hidden_layers"])
    width = dtype_bytes(kv_dtype, auto=_config_dtype(cfg))
    if cfg.get("kv_lora_rank"):
        # MLA caches the compressed latent plus the shared rotary key, per layer.
        mla = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim") or 0)
        return KVGeometry(num_layers=layers, num_kv_heads=1, head_dim=mla, dtype_bytes=width, mla_dim=mla)
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    return KVGeometry(num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim, dtype_bytes=width)


def _embedding_params(cfg: Mapping[str, Any]) -> float:
    tied = bool(cfg.get("tie_word_embeddings", False))
    return float(cfg["vocab_size"]) * float(cfg["hidden_size"]) * (1 if tied else 2)


def _attention_params(cfg: Mapping[str, Any]) -> float:
    h = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    if cfg.get("kv_lora_rank"):
        rope, nope = int(cfg.get("qk_rope_head_dim") or 0), int(cfg.get("qk_nope_head_dim") or 0)
        v_dim, rank = int(cfg.get("v_head_dim") or nope), int(cfg["kv_lora_rank"])
        q_rank = cfg.get("q_lora_rank")
        q = h * q_rank + q_rank * heads * (nope + rope) if q_rank else h * heads * (nope + rope)
        return q + h * (rank + rope) + rank * heads * (nope + v_dim) + heads * v_dim * h
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    return 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim


def estimate_params(config: PretrainedConfig | Mapping[str, Any]) -> tuple[float, float]:
    """(total, active-per-token) parameters from the config: embeddings, attention, gated MLP.

    An estimate: biases and norms are left out (well under 0.1% for these shapes).
    """
    cfg = _as_dict(config)
    h, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    dense_mlp = 3 * h * int(cfg.get("intermediate_size") or 4 * h)
    attn = _attention_params(cfg)
    emb = _embedding_params(cfg)
    if not experts:
        total = emb + layers * (attn + dense_mlp)
        return total, total
    expert = 3 * h * int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 4 * h)
    shared = int(cfg.get("n_shared_experts") or 0) * expert
    shared += 3 * h * int(cfg.get("shared_expert_intermediate_size") or 0)
    routed_per_token = int(cfg.get("num_experts_per_tok") or 1)
    dense_layers = int(cfg.get("first_k_dense_replace") or 0)
    moe_layers = layers - dense_layers
    base = emb + layers * attn + dense_layers * dense_mlp + moe_layers * (shared + h * experts)
    return base + moe_layers * experts * expert, base + moe_layers * routed_per_token * expert


class ModelInfo(BaseModel):
    """What the planner needs to know about a model."""

    name: str
    source: Literal["table", "local", "hub"]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    mla_dim: int | None = None
    num_attention_heads: int
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    params: float
    active_params: float
    params_estimated: bool
    dtype: str  # the 16/32-bit compute dtype: what KV ``auto`` means
    weight_dtype: str  # how the checkpoint stores its linear weights
    max_position_embeddings: int | None = None

    def geometry(self, kv_dtype: str = "auto") -> KVGeometry:
        return KVGeometry(
            num_layers=self.num_layers,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            dtype_bytes=dtype_bytes(kv_dtype, auto=self.dtype),
            mla_dim=self.mla_dim,
        )

    @property
    def embedding_params(self) -> float:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def weight_bytes(self, weight_dtype: str = "auto") -> float:
        """Bytes of all weights at ``weight_dtype``.

        8-bit and narrower formats quantize the linear layers only: vLLM's fp8 and
        the common int4 schemes keep the embedding and LM head at the compute dtype
        (2.1e9 of R1-Distill-Llama-70B's 70.6e9 parameters).
        """
        width = dtype_bytes(weight_dtype, auto=self.weight_dtype)
        compute = dtype_bytes(self.dtype)
        if width >= compute:
            return self.params * width
        return (self.params - self.embedding_params) * width + self.embedding_params * compute


def _quantized_dtype(cfg: Mapping[str, Any]) -> str | None:
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8":
        return "fp8"
    if method in ("awq", "gptq") or quant.get("bits") == 4:
        return "int4"
    return None


def info_from_config(
    name: str,
    config: PretrainedConfig | Mapping[str, Any],
    source: Literal["table", "local", "hub"],
    params: float | None = None,
    active_params: float | None = None,
) -> ModelInfo:
    """A ``ModelInfo`` from an HF config; parameters are estimated unless given."""
    cfg = _as_dict(config)
    geom = kv_geometry(cfg)
    total, active = estimate_params(cfg)
    dtype = _config_dtype(cfg)
    max_pos = cfg.get("max_position_embeddings")
    return ModelInfo(
        name=name,
        source=source,
        num_layers=geom.num_layers,
        num_kv_heads=geom.num_kv_heads,
        head_dim=geom.head_dim,
        mla_dim=geom.mla_dim,
        num_attention_heads=int(cfg["num_attention_heads"]),
        hidden_size=int(cfg["hidden_size"]),
        vocab_size=int(cfg["vocab_size"]),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        params=params if params is not None else total,
        active_params=active_params if active_params is not None else (params or total) * active / total,
        params_estimated=params is None,
        dtype=dtype,
        weight_dtype=_quantized_dtype(cfg) or dtype,
        max_position_embeddings=int(max_pos) if max_pos else None,
    )


def _dense(layers: int, hidden: int, inter: int, heads: int, kv: int, **extra: Any) -> dict[str, Any]:
    shape = {
        "num_hidden_layers": layers, "hidden_size": hidden, "intermediate_size": inter,
        "num_attention_heads": heads, "num_key_value_heads": kv, "torch_dtype": "bfloat16",
    }  # fmt: skip
    return shape | extra


def _llama(layers: int, hidden: int, inter: int, heads: int, kv: int) -> dict[str, Any]:
    return _dense(layers, hidden, inter, heads, kv, vocab_size=128256, max_position_embeddings=131072)


def _qwen(layers: int, hidden: int, inter: int, heads: int, kv: int, **extra: Any) -> dict[str, Any]:
    shape = {"vocab_size": 152064, "max_position_embeddings": 131072} | extra
    return _dense(layers, hidden, inter, heads, kv, **shape)


_LLAMA_70B = _llama(80, 8192, 28672, 64, 8)
_QWEN_7B = _qwen(28, 3584, 18944, 28, 4)
_QWEN_32B = _qwen(64, 5120, 27648, 40, 8)
# DeepSeek-V3 and R1 share one architecture: MLA attention, 3 dense then 58 MoE layers.
_DEEPSEEK_V3: dict[str, Any] = _dense(
    61, 7168, 18432, 128, 128, moe_intermediate_size=2048, q_lora_rank=1536, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
    num_experts_per_tok=8, first_k_dense_replace=3, vocab_size=129280, max_position_embeddings=163840,
    quantization_config={"quant_method": "fp8"},
)  # fmt: skip

# name -> (HF config fields, published parameters, published active parameters or None if dense).
# Shapes are the checkpoints' config.json values; counts are the model cards' (MTP module excluded).
BUILTIN_MODELS: dict[str, tuple[dict[str, Any], float, float | None]] = {
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": (_LLAMA_70B, 70.6e9, None),
    "deepseek-ai/DeepSeek-R1": (_DEEPSEEK_V3, 671e9, 37e9),
    "deepseek-ai/DeepSeek-V3": (_DEEPSEEK_V3, 671e9, 37e9),
    "meta-llama/Llama-3.1-8B-Instruct": (_llama(32, 4096, 14336, 32, 8), 8.03e9, None),
    "meta-llama/Llama-3.1-70B-Instruct": (_LLAMA_70B, 70.6e9, None),
    "Qwen/Qwen2.5-7B-Instruct": (_qwen(28, 3584, 18944, 28, 4, max_position_embeddings=32768), 7.62e9, None),
    "Qwen/Qwen2.5-Math-1.5B-Instruct": (
        _qwen(
            28, 1536, 8960, 12, 2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096
        ),
        1.54e9,
        None,
    ),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (_QWEN_7B, 7.62e9, None),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": (_QWEN_32B, 32.8e9, None),
    "Qwen/QwQ-32B": (_qwen(64, 5120, 27648, 40, 8, max_position_embeddings=40960), 32.8e9, None),
}


def _builtin(name: str) -> ModelInfo | None:
    key = name.strip().lower()
    for model_id, (cfg, params, active) in BUILTIN_MODELS.items():
        # A bare name ("QwQ-32B") is enough; a path-like name must match the whole id.
        if key == model_id.lower() or ("/" not in key and key == model_id.split("/")[1].lower()):
            return info_from_config(model_id, cfg, "table", params=params, active_params=active or params)
    return None


def _hub_config(name: str) -> PretrainedConfig:
    """``AutoConfig`` from the hub, or only from the local cache when the hub's host does not resolve.

    Offline, huggingface_hub would retry for half a minute, logging each attempt.
    """
    import logging
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    from transformers import AutoConfig

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        cache_only = False
    except OSError:
        cache_only = True
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        return AutoConfig.from_pretrained(name, local_files_only=cache_only)
    finally:
        hub_log.setLevel(level)


def resolve_model(name_or_path: str | Path) -> ModelInfo:
    """Built-in table, then a local directory (or config.json), then the Hugging Face hub."""
    name = str(name_or_path)
    found = _builtin(name)
    if found is not None:
        return found
    path = Path(name).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if config_file.is_file():
        try:
            cfg = json.loads(config_file.read_text())
            return info_from_config(name, cfg, "local")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ModelError(
                f"{config_file}: not a usable model config ({type(err).__name__}: {err})"
            ) from None
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"{name}: no config.json there")
    known = ", ".join(BUILTIN_MODELS)
    try:
        return info_from_config(name, _hub_config(name), "hub")
    except Exception as err:  # offline, gated, missing, malformed: all become one readable line
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelError(
            f"cannot resolve model {name!r}: not in the built-in table ({known}), not a local directory "
            f"with config.json, and the Hugging Face hub lookup failed ({type(err).__name__}: {reason})"
        ) from None


def describe(info: ModelInfo) -> str:
    """One line: the model's KV geometry and size, flagging an estimated parameter count."""
    attn = f"MLA {info.mla_dim}" if info.mla_dim else f"{info.num_kv_heads} KV heads x {info.head_dim}"
    size = f"{info.params / 1e9:.{1 if info.params >= 1e9 else 3}f}B params"
    if info.active_params < info.params:
        size += f" ({info.active_params / 1e9:.0f}B active)"
    if info.params_estimated:
        size += " (estimated from config)"
    return f"{info.name}: {info.num_layers} layers, {attn}, {size}"
