"""A batch route for vLLM's OpenAI server: many requests, each with its own sampling settings, in one POST.

    python -m vllm.entrypoints.openai.api_server --model M \\
        --middleware ttc.backends.vllm_route.batch_generate

``/v1/completions`` takes a list of prompts but one set of sampling settings, so one
seed for all of them; tree search seeds every branch on its own (so that runs repeat),
which costs one HTTP request per branch, and the server spends milliseconds of CPU on
each one. This route (loaded by vLLM's own ``--middleware`` flag, no other change to the
server) hands a whole batch to the engine at once, as ``LLM.generate`` does in process:
the same ``SamplingParams``, so a seeded request samples exactly what it samples through
``/v1/completions`` or in process. ``HTTPBackend`` finds the route by a GET and uses it.

Each item answers for itself: a request the engine refuses comes back as ``{"error": ...}``
beside its batch-mates' results.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

PATH = "/ttc/v1/generate"
VERSION = 1


async def batch_generate(request: Any, call_next: Any) -> Any:
    """Starlette HTTP middleware: serves ``PATH``, passes every other request on."""
    from starlette.responses import JSONResponse, Response

    if request.url.path != PATH:
        return await call_next(request)
    if request.method == "GET":
        return JSONResponse({"route": PATH, "version": VERSION})
    try:
        items = (await request.json())["requests"]
        if not isinstance(items, list):
            raise TypeError("requests must be a list")
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": f"expected {{'requests': [...]}}: {exc}"}, status_code=400)
    engine = request.app.state.engine_client
    results = await asyncio.gather(*(_one(engine, item) for item in items))
    # -inf log-probabilities are legal: JSON's strict mode (Starlette's) would refuse them.
    return Response(json.dumps({"results": results}), media_type="application/json")


async def _one(engine: Any, item: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    final = None
    try:
        params = SamplingParams(**item.get("sampling_params", {}), output_kind=RequestOutputKind.FINAL_ONLY)
        prompt = _engine_input(engine, list(item["prompt_token_ids"]))
        async for out in engine.generate(prompt, params, request_id=f"ttc-{uuid.uuid4().hex}"):
            final = out
    except Exception as exc:  # reported to the client for this item only
        return {"error": f"{type(exc).__name__}: {exc}"}
    if final is None:
        return {"error": "the engine returned no output"}
    return _dump(final)


def _engine_input(engine: Any, ids: list[int]) -> Any:
    """The prompt rendered here, as ``LLM.generate`` renders it: token ids need no tokenizer, and
    a raw prompt is rendered on the engine's thread pool, one hop per request, which delays a
    whole batch's arrival at the engine (side by side on 2 cores, PRM beam search's batches
    replayed through the route ran about 10% faster rendered here)."""
    try:
        from vllm.renderers.inputs.preprocess import parse_model_prompt
    except ImportError:  # a vLLM from before the renderer API: its raw-prompt path
        return {"prompt_token_ids": ids}
    renderer = engine.renderer
    (rendered,) = renderer.render_cmpl(
        [parse_model_prompt(engine.model_config, {"prompt_token_ids": ids})], renderer.default_cmpl_tok_params
    )
    return rendered


def _logprob_steps(steps: Any) -> list[dict[str, float] | None] | None:
    if steps is None:
        return None
    return [None if s is None else {str(t): float(lp.logprob) for t, lp in s.items()} for s in steps]


def _dump(out: Any) -> dict[str, Any]:
    return {
        "prompt_token_ids": list(out.prompt_token_ids),
        "num_cached_tokens": int(out.num_cached_tokens or 0),
        "prompt_logprobs": _logprob_steps(out.prompt_logprobs),
        "outputs": [
            {
                "token_ids": list(c.token_ids),
                "text": c.text,
                "cumulative_logprob": c.cumulative_logprob,
                "logprobs": _logprob_steps(c.logprobs),
                "finish_reason": str(c.finish_reason),
            }
            for c in out.outputs
        ],
    }
