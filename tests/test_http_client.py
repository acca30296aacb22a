"""The HTTP backend's client side against stub servers on loopback (no engine): what it does
when no endpoint answers at start, which failures it resends, and that it closes its clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port
from ttc.backends.base import BackendError, EngineUnavailable
from ttc.reference import POLICY_PATH
from ttc.registry import ConfigError
from ttc.types import GenRequest

httpx = pytest.importorskip("httpx")

LISTING = {"data": [{"id": "policy", "max_model_len": 128}]}
COMPLETION = {"choices": [{"index": 0, "text": "A:1\n", "token_ids": [40], "finish_reason": "stop"}], "usage": {}}
REQUEST = GenRequest(prompt="Q:1=?\n", max_tokens=4)


class Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a read timeout) leaves a broken pipe here: not the test's business."""


@contextlib.contextmanager
def stub(
    models: Any = LISTING, on_post: Callable[[BaseHTTPRequestHandler], None] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """A server that answers ``GET /v1/models`` with ``models`` (404 elsewhere) and each POST
    with ``on_post`` (a completion by default); yields its URL and the paths POSTed to it."""
    posts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            reply(self, 200, models) if self.path == "/v1/models" else reply(self, 404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(self.path)
            (on_post or (lambda h: reply(h, 200, COMPLETION)))(self)

    server = Quiet(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()
        server.server_close()


def reply(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def backend(endpoints: list[str], **kw: Any) -> Any:
    from ttc.backends.http import HTTPBackend

    return HTTPBackend(str(POLICY_PATH), endpoints=endpoints, batch_route=False, backoff_s=0.01, **kw)


# -- at start -------------------------------------------------------------------------------------


def test_no_endpoint_answering_is_one_config_error_line_naming_each_url() -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with pytest.raises(EngineUnavailable) as err:
        backend(urls)
    assert isinstance(err.value, ConfigError)  # what ttc.run prints as one line
    message = str(err.value)
    assert "\n" not in message and all(u in message for u in urls), message


def test_asking_for_the_batch_route_of_a_server_without_it_is_a_config_error() -> None:
    from ttc.backends.http import HTTPBackend

    with stub() as (url, _), pytest.raises(ConfigError, match=r"^batch_route: true, but .* has no /"):
        HTTPBackend(str(POLICY_PATH), endpoints=[url], batch_route=True)


@pytest.mark.parametrize("url", ["127.0.0.1:9", "localhost:8000", "http:/127.0.0.1:9"])
def test_an_endpoint_without_scheme_and_host_is_refused_up_front(url: str) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        backend([url])


def test_replicas_down_or_answering_nonsense_are_passed_over_for_one_that_answers() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with stub(models=[1, 2]) as (nonsense, _), stub() as (good, _):
        b = backend([down, nonsense, good])
        assert (b.served_model_name, b.max_model_len) == ("policy", 128)


@pytest.mark.parametrize("models", [[1, 2], "oops", {"data": "oops"}, {"data": [1]}])
def test_a_malformed_model_listing_is_named(models: Any) -> None:
    with stub(models=models) as (url, _), pytest.raises(EngineUnavailable, match="/v1/models") as err:
        backend([url])
    assert url in str(err.value)


def test_the_cli_says_no_endpoint_answered_in_one_line(tmp_path: Path) -> None:
    from tests.test_run_cli import run

    url = f"http://127.0.0.1:{free_port()}"
    p = run("backend=http", f"backend.endpoints=[{url}]", "dataset.limit=1", f"hydra.run.dir={tmp_path}", timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("config error:") and url in err[0], p.stderr[-2000:]


# -- which failures are resent --------------------------------------------------------------------


def test_a_read_timeout_is_final_and_the_request_is_sent_once() -> None:
    """The server is still computing a request that timed out: sending it again (here or on
    another replica) would only double the work."""

    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1.0)
        reply(handler, 200, COMPLETION)

    with stub(on_post=slow) as (a, posts_a), stub(on_post=slow) as (b, posts_b):
        client = backend([a, b], timeout_s=0.3, max_retries=3)
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"timeout_s=0\.3"):
            asyncio.run(client.generate([REQUEST]))
        assert len(posts_a) + len(posts_b) == 1
        assert time.monotonic() - start < 0.9
        assert all(ep.down_until == 0.0 for ep in client.endpoints)  # slow is not dead


def test_a_dropped_connection_is_resent_to_another_replica() -> None:
    def hang_up(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True  # no answer: the client sees the connection end

    with stub(on_post=hang_up) as (a, posts_a), stub() as (b, posts_b):
        client = backend([a, b])
        client.endpoints[1].outstanding = 1e9  # so that the first request goes to the replica that hangs up
        (res,) = asyncio.run(client.generate([REQUEST]))
        assert res.completions[0].token_ids == [40]
        assert (len(posts_a), len(posts_b)) == (1, 1)


@pytest.mark.parametrize(("status", "sent"), [(500, 1), (502, 1), (503, 2), (429, 2)])
def test_only_busy_replies_are_resent(status: int, sent: int) -> None:
    """429 and 503 say the server did not take the request; a 500 or a proxy's 502 may come
    after it did."""
    with stub(on_post=lambda h: reply(h, status, {"error": "no"})) as (url, posts):
        client = backend([url], max_retries=1)
        with pytest.raises(BackendError, match=str(status)):
            asyncio.run(client.generate([REQUEST]))
        assert len(posts) == sent


# -- clients --------------------------------------------------------------------------------------


def test_each_event_loop_closes_its_client_and_close_closes_the_last() -> None:
    from ttc.backends.http import HTTPBackend

    closed: list[int] = []

    class Counting(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(1)

    def handler(request: Any) -> Any:
        if request.method == "GET":
            return httpx.Response(200, json=LISTING) if request.url.path == "/v1/models" else httpx.Response(404)
        return httpx.Response(200, json=COMPLETION)

    class Mocked(HTTPBackend):
        _transport = Counting(handler)

    b = Mocked(str(POLICY_PATH), endpoints=["http://replica-a"], batch_route=False)
    for _ in range(2):  # a sweep: one asyncio.run per run
        asyncio.run(b.generate([REQUEST]))
    assert len(closed) == 2  # each on its own loop, before that loop ended
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(b.generate([REQUEST]))
        b.close()
        assert len(closed) == 3
    finally:
        loop.close()
    b.close()  # again, or after the loop ended: nothing left to close
    assert len(closed) == 3
