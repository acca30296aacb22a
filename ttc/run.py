"""``python -m ttc.run``: one strategy over one dataset on one engine, fully accounted.

    python -m ttc.run                                   # CoT on 4-step arithmetic, shipped model, vLLM on CPU
    python -m ttc.run strategy=best_of_n strategy.n=16
    python -m ttc.run -m strategy=cot,best_of_n ++strategy.n=1,4,16   # a sweep

Each run directory holds ``config.yaml`` (resolved), ``results.jsonl`` (one
record per query, appended as they finish) and ``summary.json`` (written last:
a run without it is incomplete and resumes where it stopped; a run whose summary
counts errored queries retries those when run again; a directory holding a run
of other settings is refused, see ``changed_settings``). A sweep cell whose
strategy does not take an option of the sweep runs without it, once: the cells
alike after that hold ``same_as.json`` naming the cell that ran it.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import hydra
import psutil
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ttc.backends.batching import EngineDied, wait_for_engine_calls
from ttc.build import Built, build, check_config
from ttc.registry import UNKNOWN_OPTION, ConfigError
from ttc.runner import read_records, run_queries, summarize

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the engine's INFO lines drown the progress bar
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


# How a run is driven, not what it computes: a rerun into the same directory may change these.
DRIVING = frozenset({"concurrency", "cohorts", "progress"})
# A rerun with another limit extends (or narrows) the same run: a query's record does not depend on it.
EXTENDING = frozenset({"dataset.limit"})
# On Ctrl-C, how long the engine batch in flight may take to finish, so that the engines shut
# down idle at exit; one that never returns (its engine died mid-batch) is left behind then.
INTERRUPT_GRACE_S = 10.0
# The exit code of a run whose engine died (a rerun resumes it); 130 is Ctrl-C's, 2 a config error's.
ENGINE_DIED_EXIT = 3


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix.removesuffix("."): value}


def changed_settings(out_dir: Path, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """Settings that the run already in ``out_dir`` (its ``config.yaml``) has otherwise than ``cfg``:
    dotted key -> (recorded, asked). A key only one side has is a default added or dropped since,
    not a different run."""
    path = out_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        # As it was written (OmegaConf's YAML, resolved then): read back the same way
        recorded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"run directory {out_dir}: its config.yaml is unreadable ({type(exc).__name__}); "
                          "choose another run directory") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"run directory {out_dir}: its config.yaml is not a run's; choose another run directory")
    old, new = _flat(recorded), _flat(OmegaConf.to_container(cfg, resolve=True))
    return {k: (old[k], new[k]) for k in old.keys() & new.keys() if old[k] != new[k] and k not in DRIVING}


def _read_summary(path: Path) -> dict[str, Any] | None:
    """The run's summary; None when there is none or it was torn (it is recomputed from the records)."""
    try:
        done = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return done if isinstance(done, dict) else None


def _write_atomic(path: Path, text: str) -> None:
    # A kill mid-write must not leave a torn file: the summary marks a run complete.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _leave_now(signum: int, frame: FrameType | None) -> None:
    """A second Ctrl-C: stop the engines' processes rather than wait for their shutdown, and exit.
    An engine process outlives its parent otherwise; multiprocessing's resource tracker ignores
    SIGTERM and cleans up their shared memory once this process is gone."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.terminate()
    os._exit(130)


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Ctrl-C while the engines start stops the run once they are up (a second one: at once).

    vLLM swallows a KeyboardInterrupt raised while it waits for its engine's handshake (its
    ``zmq_socket_ctx`` catches it): the run then went on as if nothing happened, or, the handshake
    cut short, waited VLLM_ENGINE_READY_TIMEOUT_S (10 min) for an engine that never reports ready.

    A run that inherited SIGINT ignored (a background job of a script: ``cmd &`` without job
    control) ignores it here too, as it does for the rest of the run: this once stopped such a
    run while its engine started and nowhere else.
    """
    # Only the main thread may set signal handlers; an ignored SIGINT stays ignored.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if held:
            _leave_now(signum, frame)
        held.append(signum)
        # os.write: a print here could land inside one of the main thread's own writes to stderr
        os.write(2, b"interrupt: stopping once the engines have started (Ctrl-C again to stop now)\n")

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def execute(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run (or resume) one configuration into ``out_dir``; return its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = changed_settings(out_dir, cfg)
    other = sorted(k for k in changed if k not in EXTENDING)
    if other:
        # Resuming would mix its records with another configuration's, and its summary would lie.
        shown = ", ".join(f"{k}={changed[k][0]!r} (asked: {changed[k][1]!r})" for k in other[:3])
        raise ConfigError(f"run directory {out_dir} holds a run with {shown}; "
                          "rerun with its settings to resume it, or choose another run directory")
    summary_path = out_dir / "summary.json"
    done = _read_summary(summary_path)
    if done is not None and not changed:
        if not done.get("errors"):
            print(f"complete already: {summary_path}")
            return done
        # Its summary stays until the retry writes the next: a run stopped midway is still complete.
        print(f"retrying the {done['errors']} errored queries of {out_dir}")
    spec = check_config(cfg)  # fails with one line before any engine starts
    with _ctrl_c_held():
        built: Built = build(spec)
    # Only now: a run that could not start (no such model, a bad data file) leaves no run for the report to list.
    _write_atomic(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
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
        _write_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    finally:
        built.close()
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    _stacks_on_sigusr1()
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    results = out_dir / "results.jsonl"
    try:
        summary = execute(cfg, out_dir)
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():  # while the engines shut down
            signal.signal(signal.SIGINT, _leave_now)
        # Every finished query is on disk already (appended and flushed as it finished).
        print(f"interrupted: {len(read_records(results))} queries recorded in {results}; "
              "rerun the same command to resume", file=sys.stderr)
        wait_for_engine_calls(INTERRUPT_GRACE_S)
        sys.exit(130)
    except EngineDied as exc:
        # Its batch in flight never returns: no wait for it. A sweep stops here too, its engine gone.
        print(f"engine died: {exc}; {len(read_records(results))} finished queries kept in {results}; "
              "rerun the same command to resume", file=sys.stderr)
        sys.exit(ENGINE_DIED_EXIT)
    except ConfigError as exc:
        # In a sweep, an option of its command line that this cell's strategy (verifier, ...) does not
        # take (strategy.n for cot in `strategy=cot,best_of_n ++strategy.n=1,4,16`) is dropped, and of
        # the cells then alike only the first runs (ttc/sweep.py).
        if str(hc.mode) == "RunMode.MULTIRUN" and UNKNOWN_OPTION in str(exc):
            try:
                runs = _drop_untaken_options(cfg, hc, out_dir, exc)
            except ConfigError as other:  # a problem besides the options not taken
                _config_error(other)
            if runs:
                main(cfg)  # main again, without them: its summary, its Ctrl-C, its errors
            return
        _config_error(exc)
    print(json.dumps(summary, indent=2))
    print(f"run directory: {out_dir}")
    if summary.get("errors"):
        # An errored query counts as wrong: say why, or accuracy 0.0 reads as the strategy's fault.
        first = next((r["error"] for r in read_records(out_dir / "results.jsonl") if r.get("error")), "?")
        print(f"warning: {summary['errors']} of {summary['n_queries']} queries failed (the first: {first}); "
              "rerun the same command to retry them", file=sys.stderr)


def _stacks_on_sigusr1() -> None:
    """A run that seems stuck can say where: ``kill -USR1 <pid>`` writes every thread's stack to stderr."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no stderr with a file descriptor
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)


def _config_error(exc: ConfigError) -> NoReturn:
    print(f"config error: {exc}", file=sys.stderr)
    sys.exit(2)


def _drop_untaken_options(cfg: DictConfig, hc: Any, out_dir: Path, error: ConfigError) -> bool:
    """Drop from a sweep cell's ``cfg`` the options of the sweep's command line that it does not take
    (docs/sweeps.md). True: this cell runs it so. False: an earlier cell runs the same, and this one
    says so in ``same_as.json``. Raises the cell's ConfigError for any other problem."""
    from ttc.sweep import drop_untaken, first_alike, launched_cells

    cell = list(hc.overrides.task)
    dropped = drop_untaken(cfg, cell)
    if not dropped:  # not an option of this cell's
        raise error
    owners: dict[str, list[str]] = {}  # cot -> [strategy.n]
    for key in dropped:
        owners.setdefault(cfg[key.split(".")[0]].name, []).append(key)
    what = "; ".join(f"{name} takes no {', '.join(keys)}" for name, keys in owners.items())
    first = first_alike(launched_cells(Path(hc.runtime.cwd, hc.sweep.dir)), cell, dropped)
    if first == cell:
        print(f"{what}: run once, without {'it' if len(dropped) == 1 else 'them'}")
        return True
    print(f"{what}: run once, in cell [{' '.join(first)}]")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "same_as.json", json.dumps({"same_as": first, "without": list(dropped)}) + "\n")
    return False


def output_dir_error(overrides: list[str], multirun: bool) -> str | None:
    """Why Hydra could not create the run (or sweep) directory, before it tries in a traceback."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith(f"{key}=")]
    pattern = given[-1] if given else ("multirun" if multirun else "runs")
    # The part before the first interpolation (${now:...}) is fixed: its nearest existing folder must take one more.
    probe = Path(pattern.split("${", 1)[0] or ".").expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{key}: {probe} is a file, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".ttc-probe-"))
    except OSError as exc:
        return f"{key}: cannot create {pattern} ({exc.strerror or exc})"
    return None


def cli() -> None:
    """``main`` behind a check of the command line (every cell of a sweep), so that a bad value
    or an unwritable output directory fails in one line before any run starts."""
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    # Other flags (--config-dir, --cfg, --help, ...) change what Hydra composes or does: leave those to Hydra.
    if all(a in ("-m", "--multirun") for a in flags):
        from ttc.sweep import check_sweep

        overrides = [a for a in args if not a.startswith("-")]
        multirun = bool(flags)
        error = output_dir_error(overrides, multirun) or check_sweep(overrides, CONFIG_DIR, multirun=multirun)
        if error:
            print(f"config error: {error}", file=sys.stderr)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
