"""``python -m ttc.run``: one strategy over one dataset on one engine, fully accounted.

    python -m ttc.run                                   # CoT on 4-step arithmetic, shipped model, vLLM on CPU
    python -m ttc.run strategy=best_of_n strategy.n=16
    python -m ttc.run -m strategy=cot,best_of_n ++strategy.n=1,4,16   # a sweep

Each run directory holds ``config.yaml`` (resolved), ``results.jsonl`` (one
record per query, appended as they finish) and ``summary.json`` (written last:
a run without it is incomplete and resumes where it stopped; a run whose summary
counts errored queries retries those when run again). A sweep cell that a grid
axis does not apply to holds ``skipped.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ttc.build import Built, build, check_config
from ttc.registry import UNKNOWN_OPTION, ConfigError
from ttc.runner import read_records, run_queries, summarize

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the engine's INFO lines drown the progress bar
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def execute(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run (or resume) one configuration into ``out_dir``; return its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        done = json.loads(summary_path.read_text())
        if not done.get("errors"):
            print(f"complete already: {summary_path}")
            return done
        # Its summary stays until the retry writes the next: a run stopped midway is still complete.
        print(f"retrying the {done['errors']} errored queries of {out_dir}")
    spec = check_config(cfg)  # fails with one line before any engine starts
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    built: Built = build(spec)
    try:
        results = out_dir / "results.jsonl"
        asyncio.run(
            run_queries(
                built.problems,
                built.strategy,
                built.backend,
                built.grade,
                results_path=results,
                concurrency=spec.concurrency,
                cohorts=spec.cohorts,
                seed=spec.seed,
                format_prompt=built.format_prompt,
                step_delimiter=spec.model.step_delimiter,
                usd_per_gpu_hour=spec.usd_per_gpu_hour,
                verifier_kv=built.verifier_kv,
                progress=spec.progress,
            )
        )
        wanted = {p.id for p in built.problems}
        records = [r for r in read_records(results) if r["id"] in wanted]
        summary = {**summarize(records), "strategy": spec.strategy_name, "dataset": spec.dataset_name}
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        built.close()
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        summary = execute(cfg, out_dir)
    except ConfigError as exc:
        # In a sweep, a grid axis that one strategy does not take (strategy.n for
        # cot in `strategy=cot,best_of_n ++strategy.n=1,4,16`) skips that cell.
        if str(hc.mode) == "RunMode.MULTIRUN" and UNKNOWN_OPTION in str(exc):
            print(f"skipped: {exc}")
            out_dir.mkdir(parents=True, exist_ok=True)  # the report counts the cell as skipped, not lost
            (out_dir / "skipped.json").write_text(json.dumps({"reason": str(exc)}) + "\n")
            return
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary, indent=2))
    print(f"run directory: {out_dir}")


def cli() -> None:
    """``main`` behind a check of every sweep cell, so a bad grid fails before its first run."""
    args = sys.argv[1:]
    if "-m" in args or "--multirun" in args:
        overrides = [a for a in args if not a.startswith("-")]
        # Other flags (--config-dir, --cfg, ...) change what Hydra composes: leave those sweeps to Hydra.
        if all(a in ("-m", "--multirun") for a in args if a.startswith("-")):
            from ttc.sweep import check_sweep

            error = check_sweep(overrides, CONFIG_DIR)
            if error:
                print(f"config error: {error}", file=sys.stderr)
                sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
