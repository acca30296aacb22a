"""The planner's arithmetic against the article, a projected run, and the Hydra entry point."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ttc.models import resolve_model
from ttc.plan import (
    CONFIG_DIR,
    GIB,
    GPU,
    MIB,
    Billing,
    PlanError,
    PlanSettings,
    cost_usd,
    kv_bytes_per_token_per_gpu,
    make_report,
    parse_settings,
    report_from_config,
)

REPO = Path(__file__).resolve().parent.parent
R1_DISTILL_70B = "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"
FP8_WEIGHTS_70B = 70.6e9 + 2 * 128_256 * 8192  # linear layers at 1 byte, embeddings and LM head at 2
BYTES_PER_TOKEN = 327_680


def settings(**overrides: Any) -> PlanSettings:
    return parse_settings(overrides)


def article_launch(kv_dtype: str, **overrides: Any) -> PlanSettings:
    """The article's launch: vllm serve R1-Distill-Llama-70B --quantization fp8 --max-model-len 32768
    --gpu-memory-utilization 0.95 (plus the KV dtype under test)."""
    base = dict(
        gpu="h200", weight_dtype="fp8", kv_dtype=kv_dtype, max_model_len=32768, gpu_memory_utilization=0.95,
        prompt_tokens=768, thinking_tokens=31_000, response_tokens=1000,
    )  # fmt: skip
    return settings(**(base | overrides))


@pytest.mark.parametrize(("kv_dtype", "chains"), [("fp16", 6), ("fp8", 12)])
def test_h200_article_launch(kv_dtype: str, chains: int) -> None:
    report = make_report(article_launch(kv_dtype), resolve_model(R1_DISTILL_70B))
    plan = report.plans[0]
    # 143771 MiB x 0.95 - 72.7e9 weights - 4 GiB reserve = 66.2e9 bytes of KV.
    budget = 143_771 * MIB * 0.95 - FP8_WEIGHTS_70B - 4 * GIB
    assert plan.memory.kv_budget_bytes == pytest.approx(budget)
    assert budget / 1e9 == pytest.approx(66.2, abs=0.05)
    assert plan.chains_at_max_model_len == plan.concurrent_chains == chains
    assert plan.vllm_flags["--max-num-seqs"] == str(chains)
    assert plan.vllm_flags["--max-model-len"] == "32768"
    assert plan.vllm_flags["--quantization"] == "fp8"
    # A 16-bit cache is the model's own width: "auto" (bf16 here) costs the same bytes.
    assert plan.vllm_flags["--kv-cache-dtype"] == ("fp8" if kv_dtype == "fp8" else "auto")
    assert plan.vllm_flags["--gpu-memory-utilization"] == "0.95"
    assert plan.sglang_flags["--max-running-requests"] == str(chains)
    assert not plan.warnings


def test_h200_read_as_decimal_141_gb_gives_5_chains() -> None:
    """Why the driver's size matters: 141e9 bytes instead of 140.4 GiB loses the sixth chain."""
    table = PlanSettings().gpu_table
    table["h200dec"] = GPU(
        label="141e9 B", memory_mib=round(141e9 / MIB), bandwidth_tbs=4.8, on_demand_usd_h=0, spot_usd_h=0
    )
    s = article_launch("fp16", gpu="h200dec", reserve_gib=0.0, gpu_table=table)
    assert make_report(s, resolve_model(R1_DISTILL_70B)).plans[0].chains_at_max_model_len == 5


def test_largest_context_on_h100_and_h200() -> None:
    s = settings(gpus=["h100", "h200"], weight_dtype="fp8", kv_dtype="fp16", max_model_len=8192)
    h100, h200 = make_report(s, resolve_model(R1_DISTILL_70B)).plans
    # The article's own arithmetic: (80 - 70) GB and (141 - 70) GB at 327,680 B/token.
    assert round(10e9 / BYTES_PER_TOKEN, -2) == 30_500
    assert round(71e9 / BYTES_PER_TOKEN, -3) == 217_000
    for plan, mib in ((h100, 81_559), (h200, 143_771)):
        tokens = (mib * MIB * 0.95 - FP8_WEIGHTS_70B - 4 * GIB) / BYTES_PER_TOKEN
        assert plan.max_context_tokens == math.floor(tokens / 16) * 16
    assert (h100.max_context_tokens, h200.max_context_tokens) == (12_960, 202_080)


def test_tensor_parallel_shards_gqa_but_not_mla() -> None:
    llama, r1 = resolve_model(R1_DISTILL_70B), resolve_model("deepseek-ai/DeepSeek-R1")
    assert kv_bytes_per_token_per_gpu(llama, "fp16", 8) == BYTES_PER_TOKEN / 8
    assert kv_bytes_per_token_per_gpu(llama, "fp16", 16) == BYTES_PER_TOKEN / 8  # 8 KV heads: replicated
    assert kv_bytes_per_token_per_gpu(r1, "bf16", 8) == 70_272  # each rank keeps the whole latent


def test_weights_that_do_not_fit_name_the_tp_needed() -> None:
    s = settings(gpus=["h100", "h200"], tp=8, model="deepseek-ai/DeepSeek-R1")
    h100, h200 = make_report(s, resolve_model("deepseek-ai/DeepSeek-R1")).plans
    assert h100.concurrent_queries == 0 and h100.min_tp == 16
    assert any("needs TP 16" in w for w in h100.warnings)
    assert h200.concurrent_queries > 0 and h200.min_tp is None


def test_cost_examples_from_article() -> None:
    assert cost_usd(40, 2.90) == pytest.approx(0.0322, abs=5e-5)
    assert cost_usd(120, 0.80) == pytest.approx(0.0267, abs=5e-5)
    hourly = Billing(granularity_s=3600, minimum_s=3600)
    assert cost_usd(40, 2.90, hourly) == pytest.approx(2.90)
    assert cost_usd(61, 1.0, Billing(granularity_s=60)) == pytest.approx(120 / 3600)
    assert cost_usd(80, 3.6, gpus=2) == pytest.approx(0.08)  # 40 s on each of 2 GPUs


def test_cost_per_query_uses_table_prices_and_billing() -> None:
    model = resolve_model(R1_DISTILL_70B)
    s = settings(gpus=["h100", "a100"], tp=2, weight_dtype="fp8", gpu_seconds_per_query=40)
    h100, a100 = make_report(s, model).plans
    assert h100.cost.source == "given"
    assert h100.cost.on_demand_usd_per_query == pytest.approx(40 * 2.90 / 3600)
    assert a100.cost.spot_usd_per_query == pytest.approx(40 * 0.80 / 3600)
    hourly = settings(gpu="h100", tp=2, weight_dtype="fp8", gpu_seconds_per_query=40,
                      billing={"granularity_s": 3600, "minimum_s": 3600})  # fmt: skip
    assert make_report(hourly, model).plans[0].cost.on_demand_usd_per_query == pytest.approx(2 * 2.90)


def test_decode_bound_and_scaling_signals() -> None:
    s = settings(weight_dtype="fp8", kv_dtype="fp16", target_queue_wait_s=60, arrival_rate_qps=0.1)
    report = make_report(s, resolve_model(R1_DISTILL_70B))
    plan, work = report.plans[0], report.workload
    bandwidth = 4.8e12
    chain_avg = 512 + 31_000 / 2  # a chain's mean context over its generation
    assert plan.decode.single_chain_tok_s == pytest.approx(
        bandwidth / (FP8_WEIGHTS_70B + chain_avg * BYTES_PER_TOKEN)
    )
    step = FP8_WEIGHTS_70B + plan.concurrent_chains * chain_avg * BYTES_PER_TOKEN
    assert plan.decode.batch_aggregate_tok_s == pytest.approx(plan.concurrent_chains * bandwidth / step)
    assert plan.cost.gpu_seconds_per_query == pytest.approx(31_000 / plan.decode.batch_aggregate_tok_s)
    sc = plan.scaling
    assert sc.kv_usage_threshold == pytest.approx(1 - work.kv_peak_tokens / plan.max_context_tokens)
    assert sc.queued_tokens_threshold == pytest.approx(60 * plan.decode.batch_aggregate_tok_s)
    assert sc.queued_queries_threshold == pytest.approx(sc.queued_tokens_threshold / 31_000)
    assert sc.replicas_for_arrival_rate == math.ceil(0.1 / sc.queries_per_s)


def write_run(run: Path, strategy: dict[str, Any]) -> None:
    """A finished best-of-4 run on the tiny reference model: per-query means."""
    run.mkdir()
    summary = {
        "n_queries": 8, "accuracy": 0.5, "prompt_tokens": 300.0, "generated_tokens": 24_000.0,
        "kv_peak_tokens": 24_300.0, "kv_peak_tokens_unshared": 25_200.0, "kv_peak_bytes": 24_300 * 1024,
        "gpu_seconds": 12.0,
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": {"name": "ttc-reference"}, "strategy": strategy})
    )


@pytest.mark.parametrize("strategy", [{"name": "best_of_n", "n": 4}, {"name": "custom"}])
def test_from_run_projects_onto_h100_and_h200(tmp_path: Path, strategy: dict[str, Any]) -> None:
    write_run(tmp_path / "run", strategy)
    s = settings(from_run=str(tmp_path / "run"), gpus=["h100", "h200"], weight_dtype="fp8", kv_dtype="fp16")
    report = make_report(s, resolve_model(R1_DISTILL_70B), default_max_len=32768)
    work = report.workload
    assert work.sequences_per_query == 4
    assert work.sequences_from == ("run config" if "n" in strategy else "estimate")
    assert work.chain_tokens == 25_200 / 4
    assert work.measured["run_model"] == "ttc-reference" and work.measured["gpu_seconds"] == 12.0
    h100, h200 = report.plans
    for plan in (h100, h200):
        assert plan.kv_per_query_bytes == 24_300 * BYTES_PER_TOKEN  # measured tokens, this model's bytes
    assert h100.concurrent_queries == 0 and h100.min_tp == 2  # 12,960 tokens < one query's 24,300
    assert h200.concurrent_queries == 202_080 // 24_300 == 8
    assert h200.concurrent_chains == 32 and h200.vllm_flags["--max-num-seqs"] == "32"
    assert h200.cost.gpu_seconds_per_query == pytest.approx(24_000 / h200.decode.batch_aggregate_tok_s)


def test_bad_values_fail_with_one_line() -> None:
    with pytest.raises(PlanError) as err:
        settings(gpu="h900")
    assert str(err.value).startswith("plan.gpu='h900': unknown GPU; known: a100, b200, h100, h200")
    with pytest.raises(PlanError, match=r"plan\.kv_dtype='fp4'.*'fp8'"):
        settings(kv_dtype="fp4")
    with pytest.raises(PlanError, match=r"plan\.gpus='x100'"):
        settings(gpus=["h100", "x100"])
    with pytest.raises(PlanError, match=r"plan\.tp=3: must divide the model's 64 heads"):
        make_report(settings(tp=3), resolve_model(R1_DISTILL_70B))
    with pytest.raises(PlanError, match=r"no summary\.json"):
        make_report(settings(from_run="/nonexistent/run"), resolve_model(R1_DISTILL_70B))


def test_a_query_without_tokens_is_one_line(tmp_path: Path) -> None:
    empty = settings(prompt_tokens=0, thinking_tokens=0, response_tokens=0)
    with pytest.raises(PlanError, match=r"^plan\.prompt_tokens \+ .*must be positive"):
        make_report(empty, resolve_model(R1_DISTILL_70B))
    done = run_cli("plan.prompt_tokens=0", "plan.thinking_tokens=0", "plan.response_tokens=0", out=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "must be positive" in lines[0]


FULL_SUMMARY = '{"prompt_tokens": 300, "generated_tokens": 24000, "kv_peak_tokens": 24300}'


@pytest.mark.parametrize(
    ("summary", "config", "needle"),
    [
        (FULL_SUMMARY[:40], None, "summary.json is not valid JSON"),  # a run killed while writing it
        ("[1, 2]", None, "summary.json is not a mapping"),
        (FULL_SUMMARY.replace(': 300', ': "many"'), None, "prompt_tokens is 'many', not a finite number"),
        (FULL_SUMMARY.replace("24300", "NaN"), None, "kv_peak_tokens is nan, not a finite number"),
        (FULL_SUMMARY.replace("}", ', "kv_peak_tokens_unshared": [1]}'), None, "kv_peak_tokens_unshared is [1]"),
        (FULL_SUMMARY, b"strategy: [unclosed\n", "config.yaml is not valid YAML"),
        (FULL_SUMMARY, b"\xff\xfe strategy", "config.yaml unreadable"),
        (FULL_SUMMARY, b"- a list\n", "config.yaml is not a mapping"),
    ],
)
def test_a_damaged_run_is_one_line(tmp_path: Path, summary: str, config: bytes | None, needle: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(summary)
    if config is not None:
        (run / "config.yaml").write_bytes(config)
    with pytest.raises(PlanError) as err:
        make_report(settings(from_run=str(run)), resolve_model(R1_DISTILL_70B))
    message = str(err.value)
    assert message.startswith(f"plan.from_run={str(run)!r}: ") and needle in message, message
    assert "\n" not in message


def test_cli_truncated_summary_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(FULL_SUMMARY[:40])
    done = run_cli(f"plan.from_run={run}", out=tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "summary.json is not valid JSON" in lines[0]


def test_plan_yaml_defaults_match_the_code() -> None:
    raw = yaml.safe_load((CONFIG_DIR / "plan.yaml").read_text())["plan"]
    assert PlanSettings(**raw) == PlanSettings()


def test_reference_model_group_reads_the_shipped_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ttc.reference

    monkeypatch.setattr(ttc.reference, "POLICY_PATH", tmp_path)
    group = {"name": "ttc-reference", "path": None, "max_model_len": 256}
    cfg = {"model": group, "plan": {"gpu": "rtx5090", "prompt_tokens": 20, "thinking_tokens": 100}}
    with pytest.raises(PlanError, match=r"no config\.json yet"):
        report_from_config(cfg)
    shape = {
        "num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 40, "tie_word_embeddings": True, "torch_dtype": "float32",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(shape))
    _, report = report_from_config(cfg)
    assert report.model.params_estimated and report.kv_dtype == "fp32"
    assert report.max_model_len == 256 and report.workload.chain_tokens == 20 + 100 + 1000
    assert any("exceeds max-model-len 256" in w for w in report.warnings)


def run_cli(*overrides: str, out: Path) -> subprocess.CompletedProcess[str]:
    hydra = [f"plan.out={out}", f"hydra.run.dir={out}", "hydra.output_subdir=null"]
    return subprocess.run(
        [sys.executable, "-m", "ttc.plan", *overrides, *hydra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_plans_and_takes_a_user_gpu(tmp_path: Path) -> None:
    spec = "label: My GPU, memory_mib: 98304, bandwidth_tbs: 4, on_demand_usd_h: 3, spot_usd_h: 1"
    mygpu = f"+plan.gpu_table.mygpu={{{spec}}}"
    done = run_cli(
        "model=r1_distill_llama_70b", "plan.gpus=[h200,mygpu]", mygpu, "plan.weight_dtype=fp8",
        "plan.kv_dtype=fp8", "plan.format=json", out=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads((tmp_path / "plan.json").read_text())
    h200, mine = report["plans"]
    assert h200["chains_at_max_model_len"] == 12 and report["max_model_len"] == 32768
    assert mine["label"] == "My GPU" and mine["memory"]["total_bytes"] == 98304 * MIB


def test_cli_unknown_gpu_is_one_line(tmp_path: Path) -> None:
    done = run_cli("plan.gpu=h900", out=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "plan.gpu='h900'" in lines[0] and "h200" in lines[0]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["plan.gpu_count=2"], "plan.gpu_count"),  # a misspelt key: Hydra says so in several lines
        (["model=r1_distil"], "model/r1_distil"),
    ],
)
def test_cli_hydra_errors_are_one_line(tmp_path: Path, overrides: list[str], needle: str) -> None:
    done = run_cli(*overrides, out=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], done.stderr


def test_cli_unwritable_out_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "ttc.plan", f"plan.out={tmp_path / 'file' / 'plan'}", f"hydra.run.dir={tmp_path}",
         "hydra.output_subdir=null"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "plan.out=" in lines[0], done.stderr
