"""From a Hydra config to live objects: checked first, engines started last.

``check_config`` validates every group (one-line errors naming the key) without
importing an engine; ``build`` starts the engines, reusing one per model and
settings for all runs of a sweep in the same process.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator

from ttc import datasets
from ttc.backends.base import Backend
from ttc.models import ModelError, check_context, compute_dtype
from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.registry import BACKENDS, STRATEGIES, VERIFIER_ENGINES, VERIFIERS, ConfigError, check_args, resolve
from ttc.types import KVGeometry, Problem

LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "arith": datasets.arith_problems,
    "synth_code": datasets.synth_code_problems,
    **{name: partial(datasets.load, name) for name in ("humaneval", *datasets.BENCHMARKS)},
    "mbpp": datasets.mbpp,
}


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str | None = None
    prm_path: str | None = None
    prompt_format: Literal["reference", "chat", "plain"] = "chat"
    step_delimiter: Annotated[str, StringConstraints(min_length=1)] = "\n\n"
    max_model_len: int = 4096
    dtype: str = "auto"

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        return compute_dtype(value)

    @field_validator("path", "prm_path")
    @classmethod
    def _local_path_exists(cls, value: str | None) -> str | None:
        # A hub id (org/name) is fetched where the hub is reachable; a path must be there.
        if value and value.startswith(("/", ".", "~")) and not Path(value).expanduser().is_dir():
            raise ValueError(f"no such model directory {value} (a hub id reads org/name)")
        return value

    @property
    def policy(self) -> str:
        return self.path or str(POLICY_PATH)

    @property
    def prm(self) -> str:
        return self.prm_path or str(PRM_PATH)


# What configs/config.yaml holds; a run's settings live nowhere else.
TOP_LEVEL = frozenset({"backend", "model", "strategy", "dataset", "verifier", "seed", "concurrency", "cohorts",
                       "progress", "cost"})


@dataclass
class RunSpec:
    model: ModelSpec
    backend_name: str
    backend_args: dict[str, Any]
    strategy_name: str
    strategy_args: dict[str, Any]
    verifier_name: str | None
    verifier_args: dict[str, Any]
    dataset_name: str
    dataset_args: dict[str, Any]
    verifier_engine: dict[str, Any] = field(default_factory=dict)  # backend settings of the verifier's own engine
    seed: int = 0
    concurrency: int = 64
    cohorts: int = 1
    usd_per_gpu_hour: float = 0.0
    progress: bool = True


def _group(cfg: DictConfig, key: str) -> tuple[str, dict[str, Any]]:
    node = cfg.get(key)
    if node is None or "name" not in node:
        raise ConfigError(f"{key}: missing; choose one with {key}=<name>")
    params = OmegaConf.to_container(node, resolve=True)
    assert isinstance(params, dict)
    return str(params.pop("name")), params


def check_config(cfg: DictConfig) -> RunSpec:
    """Validate the whole config before anything heavy starts."""
    try:
        model = ModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"model.{'.'.join(map(str, err['loc']))}: {msg}") from None
    b_name, b_args = _group(cfg, "backend")
    s_name, s_args = _group(cfg, "strategy")
    v_name, v_args = _group(cfg, "verifier")
    d_name, d_args = _group(cfg, "dataset")
    backend_cls = resolve(BACKENDS, b_name, "backend")
    strategy_cls = resolve(STRATEGIES, s_name, "strategy")
    v_engine = {k: v for k, v in (v_args.pop("engine", None) or {}).items() if v is not None}
    if v_name == "auto":
        v_name = getattr(strategy_cls, "default_verifier", None) or "none"
        v_args = {}
        if v_name == "none":  # the same command line serves strategies with and without a PRM
            v_engine = {}
    if v_name != "none":
        v_args = check_args(resolve(VERIFIERS, v_name, "verifier"), v_args, "verifier")
    if d_name not in LOADERS:
        raise ConfigError(f"dataset: unknown {d_name!r}; allowed: {', '.join(LOADERS)}")
    d_args = check_args(LOADERS[d_name], d_args, "dataset", injected=frozenset({"name"}))
    if d_args.get("path") and not Path(d_args["path"]).is_file():
        raise ConfigError(f"dataset.path: no such file {d_args['path']}")
    s_args = check_args(strategy_cls, s_args, "strategy")
    if getattr(strategy_cls, "needs_verifier", lambda a: False)(s_args) and v_name == "none":
        raise ConfigError(f"verifier: strategy {s_name} with these options needs one (e.g. verifier=prm)")
    _try_strategy(strategy_cls, s_args, with_verifier=v_name != "none")
    if v_name in VERIFIER_ENGINES:
        # A verifier model of its own (the PRM) on a remote backend lives on its own servers.
        own_model = VERIFIER_ENGINES[v_name] == "prm" or v_args.get("model_path")
        if b_name == "http" and own_model and "endpoints" not in v_engine:
            raise ConfigError(
                f"verifier.engine.endpoints: backend=http needs the {v_name} model's own server(s), "
                "e.g. verifier.engine.endpoints=[http://127.0.0.1:8001]"
            )
        check_args(backend_cls, {**b_args, **v_engine}, "verifier.engine")
    elif v_engine:
        raise ConfigError(f"verifier.engine: verifier {v_name} runs no model of its own")
    b_args = check_args(backend_cls, b_args, "backend")
    if b_name != "http":  # a remote server loads its own model
        length = b_args.get("max_model_len") or model.max_model_len
        models = [(model.policy, length)]
        if v_name in VERIFIER_ENGINES:
            own = model.prm if VERIFIER_ENGINES[v_name] == "prm" else model.policy
            models.append((v_args.get("model_path") or own, v_engine.get("max_model_len") or length))
        for path, positions in models:
            # Here, not as the engine starts: in a sweep, before its first cell runs
            if why := unreachable_hub_model(path):
                raise ConfigError(f"model: {why}")
            if Path(path).is_dir():  # a hub model's config is read as its engine starts, not fetched twice
                try:
                    check_context(path, positions)
                except ModelError as exc:
                    raise ConfigError(f"model: {exc}") from None
                except OSError:  # no config.json: the loader names what is missing as the engine starts
                    pass
    if b_args.get("dtype") is not None:
        try:
            b_args["dtype"] = compute_dtype(b_args["dtype"])
        except ModelError as exc:
            raise ConfigError(f"backend.dtype: {exc}") from None
    if b_name in ("vllm", "sglang") and (b_args.get("dtype") or model.dtype) == "float64":
        raise ConfigError(f"model.dtype: float64 runs on backend=hf; {b_name} computes in 32 bits at most")
    for key, least in (("concurrency", 0), ("seed", 0), ("cohorts", 1)):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            kind = "non-negative" if least == 0 else "positive"
            raise ConfigError(f"{key}: must be a {kind} integer (got {value!r})")
    if not isinstance(cfg.get("progress", True), bool):
        raise ConfigError(f"progress: must be true or false (got {cfg.get('progress')!r})")
    price = (cfg.get("cost") or {}).get("usd_per_gpu_hour", 0.0)
    if isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price < float("inf"):
        raise ConfigError(f"cost.usd_per_gpu_hour: must be a non-negative number (got {price!r})")
    # A +key=... that nothing reads is a typo (+concurency=8): it would change nothing, silently.
    for key in cfg:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key}: no such setting; the top level holds {', '.join(sorted(TOP_LEVEL))}")
    if set(cfg.get("cost") or {}) - {"usd_per_gpu_hour"}:
        extra = sorted(set(cfg.cost) - {"usd_per_gpu_hour"})[0]
        raise ConfigError(f"cost.{extra}: no such setting; cost holds usd_per_gpu_hour")
    return RunSpec(
        model=model,
        backend_name=b_name,
        backend_args=b_args,
        strategy_name=s_name,
        strategy_args=s_args,
        verifier_name=None if v_name == "none" else v_name,
        verifier_args=v_args,
        verifier_engine=v_engine,
        dataset_name=d_name,
        dataset_args=d_args,
        seed=cfg.seed,
        concurrency=max(1, cfg.concurrency),
        cohorts=cfg.cohorts,
        usd_per_gpu_hour=float(price),
        progress=cfg.get("progress", True),
    )


def _takes_verifier(strategy_cls: type) -> bool:
    return "verifier" in inspect.signature(strategy_cls).parameters


def _try_strategy(strategy_cls: type, args: dict[str, Any], with_verifier: bool) -> None:
    """Build the strategy once, engines aside, so that a rule between its arguments (beam
    search's ``n`` a multiple of ``width``) fails here, not after the engines have started.
    A configured verifier is stood in for: constructors only keep it."""
    extra = {"verifier": object()} if _takes_verifier(strategy_cls) and with_verifier else {}
    try:
        strategy_cls(**args, **extra)
    except ValueError as exc:
        raise ConfigError(f"strategy: {exc}") from None


_ENGINES: dict[tuple[Any, ...], Backend] = {}


def unreachable_hub_model(model: str) -> str | None:
    """Why ``model`` cannot load, where that is known at once: a hub id, not in the local cache, and
    the hub's host does not resolve. Left to the loaders, the hub client would retry for half a
    minute, logging two lines per attempt, before saying the same."""
    if Path(model).expanduser().exists():
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return None
    except ValueError:  # not a repository id at all: the loader's own words say so
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"cannot load {model}: the hub ({host}) cannot be reached and the model is not in the local cache"
    return None


def engine(name: str, model: str, seed: int, *, section: str = "backend", **args: Any) -> Backend:
    """One engine per (backend, model, settings) per process: a sweep reuses it. ``section``: where
    its settings come from (``backend``, ``verifier.engine``), for the errors that name one."""
    key = (name, model, seed, tuple(sorted((k, repr(v)) for k, v in args.items())))
    if key not in _ENGINES:  # (a hub model that cannot be fetched was refused by check_config)
        backend_cls = resolve(BACKENDS, name, "backend")
        try:
            if name != "http" and args.get("max_model_len"):  # every engine refuses a context past the
                check_context(model, args["max_model_len"])  # positions, vLLM in a traceback; http: the server's
            _ENGINES[key] = backend_cls(model=model, seed=seed, **args)
        except OSError as exc:  # transformers' own words: no such model, or no hub to fetch it from
            words = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"model: cannot load {model}: {words}") from None
        except ModelError as exc:
            raise ConfigError(f"model: {exc}") from None
        except ConfigError as exc:  # a backend's own settings (http's endpoints), named by key alone
            raise type(exc)(f"{section}.{exc}") from None
    return _ENGINES[key]


def prompt_formatter(model: ModelSpec, tokenizer: Any) -> Callable[[Problem], str]:
    def fmt(problem: Problem) -> str:
        if problem.meta.get("preformatted"):
            return problem.prompt
        if problem.kind == "code":
            return problem.prompt
        if model.prompt_format == "reference":
            return f"Q:{problem.prompt}=?\n"
        instruction = problem.prompt + "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
        if model.prompt_format == "chat":
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
            )
        return instruction + "\n"

    return fmt


@dataclass
class Built:
    problems: list[Problem]
    strategy: Any
    backend: Backend
    grade: Callable[[Problem, Any], Awaitable[bool]]
    format_prompt: Callable[[Problem], str]
    verifier_kv: KVGeometry | None = None

    def close(self) -> None:
        """Engines stay up for the next run of a sweep; they close at exit."""


def build_verifier(spec: RunSpec, engine_args: dict[str, Any]) -> tuple[Any, KVGeometry | None]:
    """The verifier, with its own engine where it runs a model (``VERIFIER_ENGINES``);
    an engine with the same model and settings as the policy's is the policy's."""
    assert spec.verifier_name is not None
    cls = resolve(VERIFIERS, spec.verifier_name, "verifier")
    args = dict(spec.verifier_args)
    if "step_delimiter" in inspect.signature(cls).parameters:
        # Steps are the model's: its delimiter wins over the verifier's default.
        args["step_delimiter"] = spec.model.step_delimiter
    default = VERIFIER_ENGINES.get(spec.verifier_name)
    if default is None:
        verifier = cls(**args)
        return verifier, getattr(verifier, "kv", None)
    path = args.get("model_path") or (spec.model.prm if default == "prm" else spec.model.policy)
    section = "verifier.engine" if spec.verifier_engine else "backend"
    verifier_backend = engine(spec.backend_name, path, spec.seed, section=section,
                              **{**engine_args, **spec.verifier_engine})
    return cls(verifier_backend, **args), verifier_backend.kv


def build(spec: RunSpec) -> Built:
    try:
        problems = LOADERS[spec.dataset_name](**spec.dataset_args)
    except (FileNotFoundError, datasets.DatasetError) as exc:  # the loader names the file and what is wrong
        raise ConfigError(str(exc)) from None
    if not problems:
        raise ConfigError(f"dataset: {spec.dataset_name} with these options has no problems")
    engine_args = {**spec.backend_args}
    if "max_model_len" in engine_args and engine_args["max_model_len"] is None:
        engine_args["max_model_len"] = spec.model.max_model_len
    if "dtype" in engine_args and engine_args["dtype"] is None:
        engine_args["dtype"] = spec.model.dtype
    backend = engine(spec.backend_name, spec.model.policy, spec.seed, **engine_args)

    verifier, verifier_kv = build_verifier(spec, engine_args) if spec.verifier_name else (None, None)

    strategy_cls = resolve(STRATEGIES, spec.strategy_name, "strategy")
    extra = {"verifier": verifier} if _takes_verifier(strategy_cls) else {}
    strategy = strategy_cls(**spec.strategy_args, **extra)

    from verifiers.math import equivalent

    # Grading reads the hidden tests or the gold answer; it is evaluation, not test-time compute.
    has_code = any(p.kind == "code" for p in problems)
    code_grader = resolve(VERIFIERS, "code", "verifier")() if has_code else None

    async def grade(problem: Problem, answer: Any) -> bool:
        if problem.kind == "code":
            assert code_grader is not None
            return bool((await code_grader.verify(problem, answer.completion)).passed)
        return equivalent(problem.answer, answer.answer)

    return Built(
        problems=problems,
        strategy=strategy,
        backend=backend,
        grade=grade,
        format_prompt=prompt_formatter(spec.model, backend.tokenizer),
        verifier_kv=verifier_kv,
    )
