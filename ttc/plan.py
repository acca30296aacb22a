"""Capacity and cost planner: how many reasoning chains fit, how fast, at what price.

    python -m ttc.plan                                            # R1-Distill-Llama-70B, H200
    python -m ttc.plan plan.weight_dtype=fp8 plan.gpus=[h100,h200,b200]
    python -m ttc.plan plan.from_run=runs/<run> plan.model=Qwen/QwQ-32B plan.format=json

Everything up to ``make_report`` is a pure function of its inputs; ``main`` only
reads the Hydra config, prints and writes plan.json. Formulas: docs/planner.md.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field

from ttc.models import ModelError, ModelInfo, describe, dtype_bytes, resolve_model

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GB = 1e9
GIB = 2**30
MIB = 2**20
BLOCK_TOKENS = 16  # vLLM's default KV block on GPUs: the cache is handed out in whole blocks
TP_CHOICES = (1, 2, 4, 8, 16, 32, 64)
_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


class PlanError(ValueError):
    """A bad input; the message is one line naming the key and what is allowed."""


class GPU(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    memory_mib: int = Field(gt=0)  # nvidia-smi's total: what the utilization fraction applies to
    bandwidth_tbs: float = Field(gt=0)
    on_demand_usd_h: float = Field(ge=0)
    spot_usd_h: float = Field(ge=0)

    @property
    def memory_bytes(self) -> float:
        return float(self.memory_mib * MIB)


def load_gpu_table(path: Path = CONFIG_DIR / "gpus.yaml") -> dict[str, GPU]:
    raw = yaml.safe_load(path.read_text()) or {}
    return {str(name).lower(): GPU(**spec) for name, spec in raw.items()}


class Billing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    granularity_s: float = Field(1.0, gt=0)
    minimum_s: float = Field(0.0, ge=0)
    job_queries: int = Field(1, ge=1)


class PlanSettings(BaseModel):
    """The ``plan:`` config group; the defaults mirror configs/plan.yaml."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    gpu: str = "h200"
    gpus: list[str] = Field(default_factory=list)
    tp: int = Field(1, ge=1)
    weight_dtype: Literal["auto", "bf16", "fp16", "fp8", "int8", "int4"] = "auto"
    kv_dtype: Literal["auto", "fp16", "bf16", "fp8"] = "auto"
    gpu_memory_utilization: float = Field(0.95, gt=0, le=1)
    reserve_gib: float = Field(4.0, ge=0)
    max_model_len: int | None = Field(None, gt=0)
    prompt_tokens: int = Field(512, ge=0)
    thinking_tokens: int = Field(30000, ge=0)
    response_tokens: int = Field(1000, ge=0)
    sequences_per_query: int | None = Field(None, ge=1)
    share_prefix: bool = True
    from_run: str | None = None
    bandwidth_efficiency: float = Field(1.0, gt=0, le=1)
    gpu_seconds_per_query: float | None = Field(None, gt=0)
    billing: Billing = Field(default_factory=Billing)
    target_queue_wait_s: float = Field(30.0, gt=0)
    arrival_rate_qps: float | None = Field(None, gt=0)
    format: Literal["table", "json"] = "table"
    out: str | None = None
    gpu_table: dict[str, GPU] = Field(default_factory=load_gpu_table)

    @property
    def candidates(self) -> list[str]:
        return [g.lower() for g in self.gpus] or [self.gpu.lower()]


def parse_settings(raw: Mapping[str, Any]) -> PlanSettings:
    """Validate the ``plan:`` group, turning the first problem into one line."""
    try:
        settings = PlanSettings(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in ("plan", *first["loc"]))
        raise PlanError(f"{key}={first.get('input')!r}: {first['msg']}") from None
    settings.gpu_table = {name.lower(): gpu for name, gpu in settings.gpu_table.items()}
    key = "plan.gpus" if settings.gpus else "plan.gpu"
    for name in settings.candidates:
        if name not in settings.gpu_table:
            known = ", ".join(sorted(settings.gpu_table))
            raise PlanError(f"{key}={name!r}: unknown GPU; known: {known} (add one under plan.gpu_table)")
    return settings


class Workload(BaseModel):
    """Per-query token counts: from the settings, or measured by a finished run."""

    source: str
    prompt_tokens: float  # a run sums them over a query's requests
    generated_tokens: float  # all of a query's sequences together
    sequences_per_query: int
    sequences_from: Literal["settings", "run config", "estimate"] = "settings"
    kv_peak_tokens: float  # live at the query's peak, as the engine holds them
    kv_peak_tokens_unshared: float  # the same with every sequence keeping its own prompt copy
    measured: dict[str, Any] = Field(default_factory=dict)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def chain_tokens(self) -> float:
        """Depth of one chain at the query's peak."""
        return self.kv_peak_tokens_unshared / self.sequences_per_query

    @property
    def chain_prompt(self) -> float:
        # A multi-request strategy re-sends its prefix, so the summed prompts can exceed a chain.
        return min(self.prompt_tokens, self.chain_tokens)

    @property
    def read_tokens_avg(self) -> float:
        # Attention reads every sequence's whole context, shared prompt included; contexts
        # grow roughly linearly from the prompts to the peak, so the mean is the midpoint.
        return self.sequences_per_query * (self.chain_prompt + self.chain_tokens) / 2


def given_workload(s: PlanSettings) -> Workload:
    seqs = s.sequences_per_query or 1
    per_chain = s.thinking_tokens + s.response_tokens
    unshared = seqs * (s.prompt_tokens + per_chain)
    shared = s.prompt_tokens + seqs * per_chain
    if unshared <= 0:  # every figure the planner gives is per query at its KV peak
        raise PlanError(
            "plan.prompt_tokens + plan.thinking_tokens + plan.response_tokens: must be positive "
            "(a query that holds no KV has nothing to plan)"
        )
    return Workload(
        source="settings",
        prompt_tokens=s.prompt_tokens,
        generated_tokens=seqs * per_chain,
        sequences_per_query=seqs,
        kv_peak_tokens=shared if s.share_prefix else unshared,
        kv_peak_tokens_unshared=unshared,
    )


def _run_sequences(
    s: PlanSettings, config: Mapping[str, Any], prompt: float, peak: float, unshared: float
) -> tuple[int, Literal["settings", "run config", "estimate"]]:
    if s.sequences_per_query:
        return s.sequences_per_query, "settings"
    strategy = config.get("strategy")
    if isinstance(strategy, Mapping) and isinstance(strategy.get("n"), int) and strategy["n"] > 0:
        return strategy["n"], "run config"
    # Prefix sharing saves one prompt per extra live sequence, so the gap counts them.
    return (max(1, round((unshared - peak) / prompt) + 1) if prompt > 0 else 1), "estimate"


def _read_run_file(run_dir: str, path: Path) -> Any:
    """``path`` parsed (JSON or YAML by its suffix); any damage is a one-line PlanError."""
    where = f"plan.from_run={run_dir!r}: {path.name}"
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as err:
        raise PlanError(f"{where} unreadable ({getattr(err, 'strerror', None) or err})") from None
    except json.JSONDecodeError as err:
        raise PlanError(f"{where} is not valid JSON ({err.msg}, line {err.lineno})") from None
    except yaml.YAMLError as err:
        raise PlanError(f"{where} is not valid YAML ({str(err).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise PlanError(f"{where} is not a mapping")
    return data or {}


def _measured(run_dir: str, summary: Mapping[str, Any], key: str) -> float:
    value = summary[key]
    # bool is an int to Python, and NaN or Infinity get through json.loads
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(f"plan.from_run={run_dir!r}: summary.json {key} is {value!r}, not a finite number")
    return float(value)


def run_workload(run_dir: str, s: PlanSettings) -> Workload:
    """Measured per-query means from ``<run_dir>/summary.json``; ``strategy.n`` from its config.yaml."""
    run = Path(run_dir).expanduser()
    if not (run / "summary.json").is_file():
        raise PlanError(f"plan.from_run={run_dir!r}: no summary.json there (give a finished run directory)")
    summary = _read_run_file(run_dir, run / "summary.json")
    missing = [k for k in ("prompt_tokens", "generated_tokens", "kv_peak_tokens") if k not in summary]
    if missing:
        raise PlanError(f"plan.from_run={run_dir!r}: summary.json lacks {', '.join(missing)}")
    prompt, generated = _measured(run_dir, summary, "prompt_tokens"), _measured(run_dir, summary, "generated_tokens")
    peak = _measured(run_dir, summary, "kv_peak_tokens")
    if peak <= 0:
        raise PlanError(f"plan.from_run={run_dir!r}: kv_peak_tokens is {peak:g}; the run measured nothing")
    has_unshared = summary.get("kv_peak_tokens_unshared") is not None
    unshared = max(peak, _measured(run_dir, summary, "kv_peak_tokens_unshared") if has_unshared else peak)
    config_file = run / "config.yaml"
    config = _read_run_file(run_dir, config_file) if config_file.is_file() else {}
    seqs, seqs_from = _run_sequences(s, config, prompt, peak, unshared)
    kept = ("n_queries", "accuracy", "gpu_seconds", "kv_peak_bytes")
    measured = {k: summary[k] for k in kept if k in summary}
    for section in ("model", "strategy"):
        part = config.get(section)
        if isinstance(part, Mapping) and part.get("name"):
            measured[f"run_{section}"] = part["name"]
    return Workload(
        source=str(run),
        prompt_tokens=prompt,
        generated_tokens=generated,
        sequences_per_query=seqs,
        sequences_from=seqs_from,
        kv_peak_tokens=peak if s.share_prefix else unshared,
        kv_peak_tokens_unshared=unshared,
        measured=measured,
    )


def kv_bytes_per_token_per_gpu(model: ModelInfo, kv_dtype: str, tp: int) -> float:
    geom = model.geometry(kv_dtype)
    if geom.mla_dim is not None:
        return geom.bytes_per_token  # every tensor-parallel rank keeps the whole latent
    heads_per_rank = max(1, geom.num_kv_heads // tp)  # fewer KV heads than ranks: replicated
    return 2 * geom.num_layers * heads_per_rank * geom.head_dim * geom.dtype_bytes


class Memory(BaseModel):
    """One GPU of a replica, in bytes."""

    total_bytes: float
    usable_bytes: float  # total x gpu_memory_utilization
    weight_bytes: float  # this GPU's shard
    reserve_bytes: float
    kv_budget_bytes: float  # usable - weights - reserve; negative: the weights do not fit
    kv_bytes_per_token: float  # this GPU's share of one token
    kv_capacity_tokens: int


def memory(model: ModelInfo, gpu: GPU, s: PlanSettings, weight_dtype: str, kv_dtype: str, tp: int) -> Memory:
    usable = gpu.memory_bytes * s.gpu_memory_utilization
    weights = model.weight_bytes(weight_dtype) / tp
    reserve = s.reserve_gib * GIB
    budget = usable - weights - reserve
    per_token = kv_bytes_per_token_per_gpu(model, kv_dtype, tp)
    blocks = math.floor(budget / (per_token * BLOCK_TOKENS)) if budget > 0 else 0
    return Memory(
        total_bytes=gpu.memory_bytes,
        usable_bytes=usable,
        weight_bytes=weights,
        reserve_bytes=reserve,
        kv_budget_bytes=budget,
        kv_bytes_per_token=per_token,
        kv_capacity_tokens=blocks * BLOCK_TOKENS,
    )


class Case(BaseModel):
    """What every candidate GPU is planned for."""

    model: ModelInfo
    settings: PlanSettings
    workload: Workload
    weight_dtype: str
    kv_dtype: str
    max_model_len: int


class DecodeBound(BaseModel):
    """Memory-bandwidth ceiling on decode: each step reads the weights and all live KV once."""

    single_chain_tok_s: float
    batch_chains: int
    batch_per_chain_tok_s: float
    batch_aggregate_tok_s: float
    step_bytes_single: float
    step_bytes_batch: float


def decode_bound(case: Case, gpu: GPU, mem: Memory, queries: int) -> DecodeBound:
    model, work = case.model, case.workload
    bandwidth = gpu.bandwidth_tbs * 1e12 * case.settings.bandwidth_efficiency
    # One token routes through the active experts only; a full batch is assumed to touch all.
    active_weights = mem.weight_bytes * model.active_params / model.params
    single = active_weights + (work.chain_prompt + work.chain_tokens) / 2 * mem.kv_bytes_per_token
    chains = queries * work.sequences_per_query
    batch = mem.weight_bytes + queries * work.read_tokens_avg * mem.kv_bytes_per_token
    per_chain = bandwidth / batch if chains else 0.0
    return DecodeBound(
        single_chain_tok_s=bandwidth / single,
        batch_chains=chains,
        batch_per_chain_tok_s=per_chain,
        batch_aggregate_tok_s=per_chain * chains,
        step_bytes_single=single,
        step_bytes_batch=batch if chains else 0.0,
    )


def billed_seconds(seconds: float, billing: Billing | None = None) -> float:
    """Seconds a provider charges for ``seconds`` of use: the minimum, then whole increments."""
    b = billing or Billing()
    return math.ceil(max(seconds, b.minimum_s) / b.granularity_s - 1e-9) * b.granularity_s


def cost_usd(gpu_seconds: float, usd_per_hour: float, billing: Billing | None = None, gpus: int = 1) -> float:
    """Dollars for ``gpu_seconds`` of work spread over ``gpus`` GPUs, each billed on its own."""
    return gpus * billed_seconds(gpu_seconds / gpus, billing) * usd_per_hour / 3600


class Cost(BaseModel):
    gpu_seconds_per_query: float | None
    source: Literal["bandwidth bound", "given"]
    on_demand_usd_h: float
    spot_usd_h: float
    on_demand_usd_per_query: float | None
    spot_usd_per_query: float | None


def query_cost(case: Case, gpu: GPU, bound: DecodeBound) -> Cost:
    s, tp = case.settings, case.settings.tp
    gpu_s = s.gpu_seconds_per_query
    if gpu_s is None and bound.batch_aggregate_tok_s > 0:
        # All of the replica's GPUs are busy while the batch generates a query's tokens.
        gpu_s = tp * case.workload.generated_tokens / bound.batch_aggregate_tok_s
    n = s.billing.job_queries

    def per_query(price: float) -> float | None:
        return None if gpu_s is None else cost_usd(gpu_s * n, price, s.billing, tp) / n

    return Cost(
        gpu_seconds_per_query=gpu_s,
        source="given" if s.gpu_seconds_per_query is not None else "bandwidth bound",
        on_demand_usd_h=gpu.on_demand_usd_h,
        spot_usd_h=gpu.spot_usd_h,
        on_demand_usd_per_query=per_query(gpu.on_demand_usd_h),
        spot_usd_per_query=per_query(gpu.spot_usd_h),
    )


class Scaling(BaseModel):
    """When one more replica (``gpus_per_replica`` GPUs) is due, for the target queue wait."""

    gpus_per_replica: int
    queries_per_replica: int
    queries_per_s: float  # mu = aggregate decode tokens/s / generated tokens per query
    kv_usage_threshold: float  # 1 - P/C: no room left for one more query's peak
    queued_tokens_threshold: float  # W x aggregate: generated tokens the replica clears in W
    queued_queries_threshold: float  # W x mu
    replicas_for_arrival_rate: int | None


def scaling(case: Case, mem: Memory, queries: int, bound: DecodeBound) -> Scaling:
    s, work = case.settings, case.workload
    rate = bound.batch_aggregate_tok_s
    mu = rate / work.generated_tokens if work.generated_tokens else 0.0
    capacity = mem.kv_capacity_tokens
    return Scaling(
        gpus_per_replica=s.tp,
        queries_per_replica=queries,
        queries_per_s=mu,
        kv_usage_threshold=max(0.0, 1 - work.kv_peak_tokens / capacity) if capacity else 0.0,
        queued_tokens_threshold=s.target_queue_wait_s * rate,
        queued_queries_threshold=s.target_queue_wait_s * mu,
        replicas_for_arrival_rate=math.ceil(s.arrival_rate_qps / mu) if s.arrival_rate_qps and mu else None,
    )


def engine_flags(case: Case, mem: Memory, max_len: int, chains: int) -> tuple[dict[str, str], dict[str, str]]:
    """vLLM and SGLang flags for one replica."""
    s, kv = case.settings, case.kv_dtype
    # "auto" is the model's own dtype; only a different width needs naming.
    same_kv = kv != "fp8" and dtype_bytes(kv) == dtype_bytes(case.model.dtype)
    vllm = {
        "--tensor-parallel-size": str(s.tp),
        "--max-model-len": str(max_len),
        "--max-num-seqs": str(max(chains, 1)),
        "--kv-cache-dtype": "auto" if same_kv else {"fp8": "fp8", "fp16": "float16"}.get(kv, "bfloat16"),
        "--gpu-memory-utilization": f"{s.gpu_memory_utilization:g}",
    }
    # SGLang's static fraction holds weights and KV pool; activations live outside it.
    static = math.floor((mem.usable_bytes - mem.reserve_bytes) / mem.total_bytes * 1000) / 1000
    sglang = {
        "--tp-size": str(s.tp),
        "--context-length": str(max_len),
        "--max-running-requests": str(max(chains, 1)),
        "--kv-cache-dtype": "fp8_e4m3" if kv == "fp8" else "auto",
        "--mem-fraction-static": f"{static:g}",
    }
    if case.weight_dtype == "fp8" and case.model.weight_dtype != "fp8":
        vllm["--quantization"] = sglang["--quantization"] = "fp8"
    return vllm, sglang


class GPUPlan(BaseModel):
    gpu: str
    label: str
    tp: int
    memory: Memory
    kv_bytes_per_token: float  # the whole model, all ranks together
    kv_per_chain_bytes: float  # one chain at its full depth
    kv_per_query_bytes: float  # one query at its peak
    max_context_tokens: int  # one chain alone gets the whole cache
    chains_at_max_model_len: int  # what vLLM logs as "maximum concurrency"
    concurrent_queries: int
    concurrent_chains: int
    decode: DecodeBound
    cost: Cost
    scaling: Scaling
    vllm_flags: dict[str, str]
    sglang_flags: dict[str, str]
    vllm_command: str
    sglang_command: str
    min_tp: int | None  # the smallest TP at which one query fits, when this one does not
    warnings: list[str]


def _min_tp(case: Case, gpu: GPU) -> int | None:
    for tp in TP_CHOICES:
        if case.model.num_attention_heads % tp == 0:
            mem = memory(case.model, gpu, case.settings, case.weight_dtype, case.kv_dtype, tp)
            if mem.kv_capacity_tokens >= case.workload.kv_peak_tokens:
                return tp
    return None


def plan_gpu(case: Case, gpu_name: str) -> GPUPlan:
    """Everything the planner says about one GPU type at ``plan.tp``."""
    model, s, work, max_len = case.model, case.settings, case.workload, case.max_model_len
    gpu = s.gpu_table[gpu_name]
    mem = memory(model, gpu, s, case.weight_dtype, case.kv_dtype, s.tp)
    capacity = mem.kv_capacity_tokens
    queries = math.floor(capacity / work.kv_peak_tokens)
    warnings: list[str] = []
    flag_len = max_len
    if capacity < BLOCK_TOKENS:
        warnings.append(f"{gpu_name}: the weights leave no room for KV cache at TP {s.tp}")
    elif capacity < max_len:
        # vLLM refuses to start when one sequence of max-model-len cannot fit.
        flag_len = capacity // 1024 * 1024 or capacity
        warnings.append(f"{gpu_name}: max-model-len {max_len:,} does not fit; lowered to {flag_len:,}")
    min_tp = None
    if queries == 0:
        min_tp = _min_tp(case, gpu)
        need = f"TP {min_tp}" if min_tp else f"more than TP {TP_CHOICES[-1]}"
        warnings.append(f"{gpu_name}: one query ({work.kv_peak_tokens:,.0f} KV tokens) needs {need}")
    bound = decode_bound(case, gpu, mem, queries)
    chains = queries * work.sequences_per_query
    vllm, sglang = engine_flags(case, mem, flag_len, chains)
    per_token = model.geometry(case.kv_dtype).bytes_per_token
    launch = "python -m sglang.launch_server --model-path"
    return GPUPlan(
        gpu=gpu_name,
        label=gpu.label,
        tp=s.tp,
        memory=mem,
        kv_bytes_per_token=per_token,
        kv_per_chain_bytes=work.chain_tokens * per_token,
        kv_per_query_bytes=work.kv_peak_tokens * per_token,
        max_context_tokens=capacity,
        chains_at_max_model_len=capacity // max_len,
        concurrent_queries=queries,
        concurrent_chains=chains,
        decode=bound,
        cost=query_cost(case, gpu, bound),
        scaling=scaling(case, mem, queries, bound),
        vllm_flags=vllm,
        sglang_flags=sglang,
        vllm_command=" ".join(["vllm serve", model.name, *(f"{k} {v}" for k, v in vllm.items())]),
        sglang_command=" ".join([launch, model.name, *(f"{k} {v}" for k, v in sglang.items())]),
        min_tp=min_tp,
        warnings=warnings,
    )


class Report(Case):
    summary: str
    assumptions: list[str]
    warnings: list[str]
    plans: list[GPUPlan]


def _assumptions(case: Case) -> list[str]:
    model, s, work = case.model, case.settings, case.workload
    sharing = (
        "a query's sequences share its prompt (prefix caching)" if s.share_prefix else "no prefix sharing"
    )
    notes = [
        f"GPU memory is the driver's total (nvidia-smi MiB); the engine uses {s.gpu_memory_utilization:g} "
        f"of it and holds back {s.reserve_gib:g} GiB of that for activations, CUDA graphs and workspaces.",
        f"KV capacity counts whole {BLOCK_TOKENS}-token blocks; {sharing}.",
        "Decode speed is a memory-bandwidth ceiling: each step reads the weights and every live token's KV "
        f"once at {s.bandwidth_efficiency:.0%} of peak bandwidth; prefill, communication and compute limits "
        "are ignored, so tokens/s are upper bounds and GPU-seconds lower bounds.",
        f"Billing: {s.billing.granularity_s:g} s increments, {s.billing.minimum_s:g} s minimum per GPU, "
        f"queries per billed job: {s.billing.job_queries}.",
    ]
    if dtype_bytes(case.weight_dtype) < dtype_bytes(model.dtype):
        notes.append(
            f"{case.weight_dtype} weights: linear layers only; embeddings and LM head stay {model.dtype}."
        )
    if model.active_params < model.params:
        notes.append(
            f"MoE: one chain reads the {model.active_params / 1e9:.0f}B active parameters per step; "
            "a full batch is assumed to touch every expert."
        )
    if model.params_estimated:
        notes.append("The parameter count is estimated from the config (embeddings, attention, MLP).")
    if work.sequences_from == "estimate":
        notes.append(
            f"Live sequences per query ({work.sequences_per_query}) estimated from the run as "
            "(unshared - shared KV peak) / prompt + 1; set plan.sequences_per_query to override."
        )
    return notes


def _canonical(dtype: str) -> str:
    return _SHORT.get(dtype.lower().removeprefix("torch."), dtype.lower())


def make_report(s: PlanSettings, model: ModelInfo, default_max_len: int | None = None) -> Report:
    """Plan ``model`` on every candidate GPU; ``default_max_len`` comes from the model config group."""
    if model.num_attention_heads % s.tp:
        allowed = [t for t in TP_CHOICES if model.num_attention_heads % t == 0]
        raise PlanError(
            f"plan.tp={s.tp}: must divide the model's {model.num_attention_heads} heads: {allowed}"
        )
    work = run_workload(s.from_run, s) if s.from_run else given_workload(s)
    max_len = s.max_model_len or default_max_len or math.ceil(work.chain_tokens / 1024) * 1024
    case = Case(
        model=model,
        settings=s,
        workload=work,
        weight_dtype=_canonical(model.weight_dtype if s.weight_dtype == "auto" else s.weight_dtype),
        kv_dtype=_canonical(model.dtype if s.kv_dtype == "auto" else s.kv_dtype),
        max_model_len=max_len,
    )
    warnings = []
    if work.chain_tokens > max_len:
        warnings.append(f"a chain of {work.chain_tokens:,.0f} tokens exceeds max-model-len {max_len:,}")
    if model.max_position_embeddings and max_len > model.max_position_embeddings:
        warnings.append(
            f"max-model-len {max_len:,} exceeds the model's {model.max_position_embeddings:,} positions"
        )
    plans = [plan_gpu(case, name) for name in s.candidates]
    return Report(
        **dict(case),
        summary=describe(model),
        assumptions=_assumptions(case),
        warnings=warnings + [w for p in plans for w in p.warnings],
        plans=plans,
    )


def _model_source(s: PlanSettings, model_cfg: Mapping[str, Any]) -> str:
    if s.model:
        return s.model
    if model_cfg.get("path"):
        return str(model_cfg["path"])
    if model_cfg.get("name") == "ttc-reference":
        from ttc.reference import POLICY_PATH

        if not (POLICY_PATH / "config.json").is_file():
            raise PlanError(
                f"model=reference: {POLICY_PATH} has no config.json yet; python -m ttc.reference.train"
            )
        return str(POLICY_PATH)
    if not model_cfg.get("name"):
        raise PlanError("model: the model group names no path or name; set plan.model")
    return str(model_cfg["name"])


def report_from_config(cfg: DictConfig | Mapping[str, Any]) -> tuple[PlanSettings, Report]:
    """The Hydra glue: a resolved config (``model`` and ``plan`` groups) to a report."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(raw, dict)
    settings = parse_settings(raw.get("plan") or {})
    model_cfg = raw.get("model") or {}
    try:
        model = resolve_model(_model_source(settings, model_cfg))
    except ModelError as err:
        raise PlanError(str(err)) from None
    # The group's max_model_len belongs to the group's model, not to one named in plan.model.
    default_len = None if settings.model else model_cfg.get("max_model_len")
    return settings, make_report(settings, model, default_len)


def _gb(x: float) -> str:
    return f"{x / GB:,.1f} GB"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def _rows(p: GPUPlan, r: Report) -> list[tuple[str, str]]:
    """The table's cells for one GPU, top to bottom."""
    m, d, c, sc, w = p.memory, p.decode, p.cost, p.scaling, r.workload
    unfit = "" if p.concurrent_queries else (f"needs TP {p.min_tp}" if p.min_tp else "does not fit")
    gpu_s = "-" if c.gpu_seconds_per_query is None else f"{c.gpu_seconds_per_query:,.1f} ({c.source})"
    return [
        ("GPU memory (driver total)", f"{_gb(m.total_bytes)} ({m.total_bytes / GIB:.1f} GiB)"),
        ("x utilization", _gb(m.usable_bytes)),
        ("weights per GPU", f"{_gb(m.weight_bytes)} ({r.weight_dtype})"),
        ("runtime reserve", _gb(m.reserve_bytes)),
        ("KV budget per GPU", _gb(m.kv_budget_bytes)),
        ("KV bytes/token (model)", f"{p.kv_bytes_per_token:,.0f} ({r.kv_dtype})"),
        ("KV per chain", f"{_gb(p.kv_per_chain_bytes)} @ {w.chain_tokens:,.0f} tok"),
        ("KV per query at peak", f"{_gb(p.kv_per_query_bytes)} @ {w.kv_peak_tokens:,.0f} tok"),
        ("largest context, one chain", f"{p.max_context_tokens:,} tok"),
        ("chains at max-model-len", f"{p.chains_at_max_model_len} @ {r.max_model_len:,}"),
        ("concurrent queries / chains", f"{p.concurrent_queries} / {p.concurrent_chains}"),
        ("decode bound, one chain", f"{d.single_chain_tok_s:,.1f} tok/s"),
        (
            "decode bound, full batch",
            unfit
            or f"{d.batch_per_chain_tok_s:,.1f} x {d.batch_chains} = {d.batch_aggregate_tok_s:,.0f} tok/s",
        ),
        ("GPU-seconds per query", gpu_s),
        ("$ per query, on-demand", f"{_usd(c.on_demand_usd_per_query)} @ ${c.on_demand_usd_h:g}/h"),
        ("$ per query, spot", f"{_usd(c.spot_usd_per_query)} @ ${c.spot_usd_h:g}/h"),
        ("scale out at KV usage >=", unfit or f"{sc.kv_usage_threshold:.0%}"),
        (
            "... and queued tokens >=",
            unfit or f"{sc.queued_tokens_threshold:,.0f} ({sc.queued_queries_threshold:.1f} queries)",
        ),
    ]


def render(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    w = report.workload
    origin = "from settings" if w.source == "settings" else f"measured in {w.source}"
    console.print(f"[bold]{report.summary}[/bold]")
    console.print(
        f"per query ({origin}): {w.prompt_tokens:,.0f} prompt + {w.generated_tokens:,.0f} generated tokens, "
        f"{w.sequences_per_query} live sequence(s), KV peak {w.kv_peak_tokens:,.0f} tokens"
    )
    table = Table(header_style="bold")
    table.add_column("")
    for p in report.plans:
        table.add_column(f"{p.gpu} x{p.tp}\n{p.label}", justify="right")
    columns = [_rows(p, report) for p in report.plans]
    for i, (label, _) in enumerate(columns[0]):
        table.add_row(label, *(col[i][1] for col in columns))
    console.print(table)
    console.print(f"scale-out thresholds are for a {report.settings.target_queue_wait_s:g} s queue wait")
    for p in report.plans:
        console.print(f"[bold]{p.gpu}[/bold] vLLM:   {p.vllm_command}", soft_wrap=True, highlight=False)
        console.print(f"[bold]{p.gpu}[/bold] SGLang: {p.sglang_command}", soft_wrap=True, highlight=False)
    console.print("[bold]assumptions[/bold]")
    for note in report.assumptions:
        console.print(f"  - {note}", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@hydra.main(config_path=str(CONFIG_DIR), config_name="plan", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        settings, report = report_from_config(cfg)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    out = Path(settings.out) if settings.out else Path(HydraConfig.get().runtime.output_dir)
    text = json.dumps(report.model_dump(mode="json"), indent=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(text + "\n")
    except OSError as err:
        print(f"error: plan.out={str(out)!r}: cannot write plan.json there ({err.strerror or err})", file=sys.stderr)
        sys.exit(2)
    if settings.format == "json":
        print(text)
    else:
        render(report)
        print(f"plan.json: {out / 'plan.json'}")


def cli() -> None:
    """``main`` behind a composition of the command line, so that a misspelt group option or key
    fails in one line, not in Hydra's several."""
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):  # --help, --cfg, ...: Hydra's own
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        overrides = [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                compose(config_name="plan", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            hint = " (no such key)" if first.startswith("Could not override") else ""
            print(f"error: {first}{hint}", file=sys.stderr)
            sys.exit(2)
        finally:
            GlobalHydra.instance().clear()
    main()


if __name__ == "__main__":
    cli()
