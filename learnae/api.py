"""The trainer node's HTTP API (aiohttp), on 127.0.0.1 unless told otherwise.

Routes:

- ``/``: the volunteer's dashboard (:mod:`learnae.dashboard`): the status as a page that
  refreshes itself; ``/static/NAME`` its scripts and styles (shipped in the package).
- ``/history``: JSON: samples of the node's progress over its run
  (:class:`learnae.node.history.History`): time, step, accuracy and loss, merges, rejections.
- ``/ledger/recent``: JSON: the ledger's latest transactions (``?n=``, at most
  :data:`MAX_RECENT`) with their parents (:meth:`learnae.ledger.tangle.Tangle.recent`).
- ``/status``: JSON: peer id, author id, addresses, peers, local step, last checkpoint,
  latest metrics (own held-out data and the common test split), merges done, rejections
  counted by reason, ledger counts (:meth:`learnae.node.TrainerNode.status`).
- ``/metrics``: the same counters in the Prometheus text exposition format (0.0.4).
- ``/ledger/tips``: JSON: the tangle's tips and transaction count.
- ``POST /ledger/tx``: one signed transaction's bytes (at most the swarm's ``limits.tx_bytes``),
  e.g. a steward's ``admit`` or ``revoke`` made by ``learnae admit``. Validated in full as if
  gossiped, stored and gossiped. 200 ``{"tx", "status"}`` (``inserted``, ``duplicate``,
  ``pending``: a parent is missing here), or 4xx ``{"error": code, "reason": text}`` with
  the :class:`~learnae.errors.TxRejected` code (403 for ``not-admitted``, ``revoked``,
  ``not-steward``, ...).
- ``POST /ingest``: a sensor's data chunk and its signed ``data`` transaction, as JSON
  ``{"chunk": base64, "tx": base64}``. The node checks signature, admission, schema and
  limits (:func:`learnae.ingest.check_ingest`), then adds and pins the chunk, stores the
  transaction and gossips it. 200 ``{"tx", "cid", "tips"}``, or 4xx/5xx
  ``{"error": code, "reason": text}``. ``GET /ingest``: the tips a sensor should approve
  (and with ``?author=ID``, that sensor's next free ``seq``).

It runs on the node's network loop, the loop that owns the tangle.

The API may face a LAN (sensors post to it), so it bounds what a client can hold:

- a connection must deliver a whole request head (request line and headers) within
  ``header_timeout`` (:data:`HEADER_TIMEOUT`) of opening or of the previous answer, else
  the server closes it; an idle keep-alive connection is closed after the same time;
- a ``POST /ingest`` body must arrive whole within ``body_timeout`` (:data:`BODY_TIMEOUT`)
  of its head (else 408) and may not exceed ``max_body`` bytes (else 413, from the
  Content-Length at once, or as soon as more arrived); at most ``max_bodies``
  (:data:`MAX_BODIES`) bodies are read at once, so bodies in memory stay under
  ``max_bodies * max_body``; others wait for a turn within their deadline (else 503);
- a body the server did not read (a 413, a 408, a body sent to a GET) is read and thrown
  away for at most :data:`LINGER_TIME` s (so the client can see the answer), then the
  connection is closed;
- at most ``max_connections`` (:data:`MAX_CONNECTIONS`) connections are open at once; a
  further one makes the server close the connection that has been open longest. A real
  request is answered in milliseconds, so under a flood of connections that never finish
  it is the flood's own that give way, and ``/status`` or a sensor's post still get in (a
  refusal at the cap would let 64 stalled connections lock everyone out).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiohttp import web

from learnae.dashboard import page, static_file
from learnae.ingest import TX_STATUS, handle_ingest, ingest_info

if TYPE_CHECKING:
    from learnae.ipfs.base import IpfsNode
    from learnae.ledger.tangle import Tangle
    from learnae.manifest import Manifest

__all__ = ["BODY_TIMEOUT", "HEADER_TIMEOUT", "LINGER_TIME", "MAX_BODIES", "MAX_CONNECTIONS",
           "ApiNode", "body_limit", "make_app", "prometheus_text", "read_body", "start_api"]

MAX_RECENT = 200
"""Most transactions ``/ledger/recent`` returns."""
HEADER_TIMEOUT = 10.0
"""Seconds a connection gets to deliver a whole request head, from opening or from the
previous answer (so also how long an idle keep-alive connection stays open)."""
BODY_TIMEOUT = 30.0
"""Seconds a ``POST /ingest`` body gets to arrive whole once its head is in: the default
limit's 11 MB at 3 Mbit/s."""
LINGER_TIME = 2.0
"""Seconds the server reads (and throws away) a body it answered without reading, so the
client can see the answer before the connection closes (at most ``body_timeout``)."""
MAX_CONNECTIONS = 64
"""Connections open at once; a further one closes the one open longest."""
MAX_BODIES = 4
"""``POST /ingest`` bodies read at once (bodies in memory: at most this times the limit)."""
TRIM_AFTER = 1 << 20
"""Bytes a connection must have received for its close to trigger :class:`_GiveBack`."""

_malloc_trim: Callable[[int], int] | None = None
with contextlib.suppress(OSError, AttributeError, TypeError):  # glibc only, not musl or macOS
    _malloc_trim = ctypes.CDLL(None).malloc_trim


class ApiNode(Protocol):
    """What the API serves: a :class:`learnae.node.TrainerNode`, or anything with these.

    ``tangle`` and ``ipfs`` are ``None`` while the node starts or stops (the ledger routes then
    answer 503). An optional ``sync`` attribute (a :class:`~learnae.ledger.sync.TangleSync`, or
    ``None``) gossips the transactions ``POST /ingest`` stores.
    """

    @property
    def manifest(self) -> Manifest:
        """The swarm's manifest (limits, schema, admission)."""
        ...

    @property
    def tangle(self) -> Tangle | None:
        """The node's ledger, ``None`` while it is closed."""
        ...

    @property
    def ipfs(self) -> IpfsNode | None:
        """The node's IPFS node, ``None`` while it is not running."""
        ...

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` returns (JSON-ready)."""
        ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(status: dict[str, Any]) -> str:
    """Render a node status (as :meth:`TrainerNode.status` returns) as Prometheus text.

    Counts keyed by reason code (``rejections``, ``errors``) become one series per code with
    the code in a ``reason`` label (``learnae_rejections{reason="stale"}``); ``peer_count``
    is the gauge ``learnae_peers`` (a ``_count`` suffix is reserved for histograms) and
    ``uptime_s`` is ``learnae_uptime_seconds``.
    """
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP learnae_{name} {help_text}")
        lines.append(f"# TYPE learnae_{name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"learnae_{name}{{{label}}} {float(value)!r}" if label
                         else f"learnae_{name} {float(value)!r}")

    metric("step", "counter", "Local training steps (batches) so far.", [({}, status.get("step", 0))])
    metric("samples", "counter", "Examples trained on so far.", [({}, status.get("samples", 0))])
    metric("peers", "gauge", "Connected IPFS peers.", [({}, status.get("peer_count", 0))])
    metric("checkpoints_published", "counter", "Checkpoints published by this run.",
           [({}, status.get("published", 0))])
    metric("merges", "counter", "Merges that used at least one peer checkpoint.", [({}, status.get("merges", 0))])
    metric("merges_applied", "counter", "Merged weights the training side applied.",
           [({}, status.get("merges_applied", 0))])
    metric("peers_passed_over", "gauge", "Peer authors skipped in merges after a checkpoint of theirs"
           " could not be used.", [({}, status.get("peers_passed_over", 0))])
    metric("rejections", "counter", "Peer checkpoints refused, by reason.",
           [({"reason": k}, v) for k, v in sorted(status.get("rejections", {}).items())])
    metric("errors", "counter", "Errors in this node's own work (publish, merge, adopt), by reason.",
           [({"reason": k}, v) for k, v in sorted(status.get("errors", {}).items())])
    metric("uptime_seconds", "gauge", "Seconds since the node started.", [({}, status.get("uptime_s", 0))])
    adopt = status.get("adopt") or {}
    if adopt:
        metric("data_adopted_chunks", "counter", "Sensor data chunks added to the training pool.",
               [({}, adopt.get("chunks", 0))])
        metric("data_adopted_rows", "counter", "Sensor rows added to the training pool.", [({}, adopt.get("rows", 0))])
    for which, key in (("holdout", "metrics"), ("test", "test")):
        for name, value in sorted((status.get(key) or {}).items()):
            metric(f"{which}_{name}", "gauge", f"Model {name} on the {which} data.", [({}, value)])
    ledger = status.get("ledger") or {}
    if ledger:
        metric("ledger_transactions", "gauge", "Transactions in the tangle, by kind.",
               [({"kind": k}, v) for k, v in sorted(ledger.get("by_kind", {}).items())])
        metric("ledger_tips", "gauge", "Tips of the tangle.", [({}, ledger.get("tips", 0))])
    return "\n".join(lines) + "\n"


def body_limit(manifest: Manifest | None) -> int:
    """The largest ``POST /ingest`` body, in bytes, for a swarm's manifest (``None``: 1 MiB).

    A chunk travels base64-encoded: the swarm's chunk limit plus a third, plus 64 KiB for
    the transaction and the JSON around them (8 MiB chunks: 11,250,346 bytes).
    """
    return manifest.limits.chunk_bytes * 4 // 3 + (64 << 10) if manifest else 1 << 20


async def read_body(request: web.BaseRequest, limit: int, timeout: float,
                    turns: asyncio.Semaphore | None = None) -> bytes:
    """Read ``request``'s whole body as it streams in, bounded in size and time.

    Unlike ``request.read()`` this refuses a too-large Content-Length before reading, keeps
    aiohttp's per-connection buffer at its default (``read()`` raises it to the limit) and
    copies the body once.

    Args:
        request: the request whose body to read.
        limit: the largest body accepted, in bytes.
        timeout: seconds for the whole body (and the wait for a turn) to arrive.
        turns: if given, held while reading: bounds the bodies read at once.

    Returns:
        The body, at most ``limit`` bytes.

    Raises:
        web.HTTPRequestEntityTooLarge: (413) Content-Length, or the bytes that arrived,
            over ``limit``.
        web.HTTPRequestTimeout: (408) the body did not arrive whole within ``timeout`` s.
        web.HTTPServiceUnavailable: (503) no turn came within ``timeout`` s.
        web.HTTPBadRequest: (400) the client closed the connection mid-body, or the body's
            transfer encoding is broken.
    """
    def too_large() -> web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=request.content_length or limit + 1,
            text=f"the body is over this node's limit of {limit} bytes; send smaller chunks"
                 " (the swarm manifest's limits.chunk_bytes)")

    if request.content_length is not None and request.content_length > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    turn = False
    try:
        async with asyncio.timeout(timeout):
            if turns is not None:
                await turns.acquire()
            turn = True
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise too_large()
                chunks.append(chunk)
    except TimeoutError:
        if not turn:
            raise web.HTTPServiceUnavailable(
                text=f"the node is receiving other bodies; none finished in {timeout:g} s:"
                     " retry later") from None
        raise web.HTTPRequestTimeout(
            text=f"the body did not arrive whole within {timeout:g} s ({size} bytes came)"
                 "; retry on a faster link") from None
    except (ConnectionResetError, web.RequestPayloadError) as exc:
        raise web.HTTPBadRequest(text=f"the body could not be read: {exc}") from None
    finally:
        if turn and turns is not None:
            turns.release()
    return b"".join(chunks)


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       ) -> web.StreamResponse:
    """Answer HTTP errors (404, 405, a body over the size limit, ...) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason.lower().replace(" ", "-"),
                                  "reason": exc.text or exc.reason}, status=exc.status)


def make_app(node: ApiNode, *, body_timeout: float = BODY_TIMEOUT,
             max_bodies: int = MAX_BODIES, max_body: int | None = None) -> web.Application:
    """The aiohttp application for ``node`` (see :class:`ApiNode`).

    ``POST /ingest`` bodies are read with :func:`read_body`: at most ``max_body`` bytes
    (default :func:`body_limit` of the node's manifest), within ``body_timeout`` s, at most
    ``max_bodies`` at once.
    """
    limit = body_limit(getattr(node, "manifest", None)) if max_body is None else max_body
    turns = asyncio.Semaphore(max_bodies)

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(node.status())

    async def dashboard(_request: web.Request) -> web.Response:
        return web.Response(text=page(node.status()), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def static(request: web.Request) -> web.Response:
        found = static_file(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text=f"no file {request.match_info['name']!r} here")
        body, content_type = found
        return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "max-age=3600"})

    async def history(_request: web.Request) -> web.Response:
        kept = getattr(node, "history", None)
        return web.json_response(kept.samples() if kept is not None else [])

    async def recent(request: web.Request) -> web.Response:
        tangle = node.tangle
        if tangle is None:
            raise web.HTTPServiceUnavailable(text="the ledger is closed")
        try:
            n = min(MAX_RECENT, max(1, int(request.query.get("n", "40"))))
        except ValueError:
            raise web.HTTPBadRequest(text="n must be a whole number") from None
        return web.json_response(tangle.recent(n))

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(node.status()), content_type="text/plain",
                            charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"})

    async def tips(_request: web.Request) -> web.Response:
        tangle = node.tangle
        if tangle is None:
            raise web.HTTPServiceUnavailable(text="the ledger is closed")
        return web.json_response({"tips": sorted(tangle.tips()), "count": tangle.count()})

    def ledger() -> tuple[Tangle, IpfsNode]:
        if node.tangle is None or node.ipfs is None:
            raise web.HTTPServiceUnavailable(text="the node is starting or stopping")
        return node.tangle, node.ipfs

    async def ingest(request: web.Request) -> web.Response:
        ledger()  # refuse before reading the body if the node cannot take it
        body = await read_body(request, limit, body_timeout, turns)
        sync = getattr(node, "sync", None)
        tangle, ipfs = ledger()
        code, answer = await handle_ingest(body, manifest=node.manifest, tangle=tangle,
                                           ipfs=ipfs, publish=sync.publish if sync else None)
        return web.json_response(answer, status=code)

    async def ingest_tips(request: web.Request) -> web.Response:
        return web.json_response(ingest_info(ledger()[0], request.query.get("author")))

    async def submit(request: web.Request) -> web.Response:
        ledger()
        body = await read_body(request, node.manifest.limits.tx_bytes, body_timeout, turns)
        tangle, _ = ledger()
        result = tangle.insert(body)
        if result.error is not None:
            return web.json_response({"error": result.error.code, "reason": result.error.reason},
                                     status=TX_STATUS.get(result.error.code, 400))
        sync = getattr(node, "sync", None)
        if sync is not None and result.status == "inserted" and result.id is not None:
            await sync.publish(*(t for t in map(tangle.get, (result.id, *result.released)) if t is not None))
        return web.json_response({"tx": result.id, "status": result.status})

    app = web.Application(client_max_size=limit, middlewares=[_json_errors])
    app.router.add_post("/ingest", ingest)
    app.router.add_get("/ingest", ingest_tips)
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/history", history)
    app.router.add_get("/ledger/recent", recent)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ledger/tips", tips)
    app.router.add_post("/ledger/tx", submit)
    return app


class _GiveBack:
    """Gives the heap memory freed by closed connections back to the OS.

    Bodies arrive in pieces of up to 256 KiB that glibc's allocator keeps once freed (its
    heap shrinks only from the top), so the RSS of a node that received large bodies would
    stay up. :meth:`soon` runs glibc's ``malloc_trim(0)`` in a worker thread one second
    later (a burst of closes: once); without glibc it does nothing.
    """

    def __init__(self) -> None:
        self._pending = False

    def soon(self) -> None:
        if _malloc_trim is None or self._pending:
            return
        self._pending = True
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, lambda: loop.run_in_executor(None, self._trim))

    def _trim(self) -> None:
        self._pending = False
        if _malloc_trim is not None:
            _malloc_trim(0)


class _Admit(asyncio.Protocol):
    """One accepted connection, passed on to aiohttp's protocol.

    ``live`` holds the open ones, oldest first; when ``cap`` are open, a new one closes the
    oldest. When one that received at least :data:`TRIM_AFTER` bytes closes,
    ``give_back.soon()``.
    """

    def __init__(self, make_handler: Callable[[], asyncio.Protocol], live: dict[_Admit, None],
                 cap: int, give_back: _GiveBack) -> None:
        self._make_handler, self._live, self._cap = make_handler, live, cap
        self._give_back = give_back
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        while len(self._live) >= self._cap:
            next(iter(self._live))._evict()
        self._live[self] = None
        self._transport = cast(asyncio.Transport, transport)  # create_server: a TCP transport
        self._inner = self._make_handler()
        self._inner.connection_made(transport)

    def _evict(self) -> None:
        self._live.pop(self, None)
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.pop(self, None)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            if self._received >= TRIM_AFTER:
                self._give_back.soon()

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._received += len(data)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _CappedSite(web.BaseSite):
    """Like :class:`aiohttp.web.TCPSite`, with at most ``max_connections`` open at once."""

    __slots__ = ("_host", "_port", "_cap")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, max_connections: int):
        super().__init__(runner)
        self._host, self._port, self._cap = host, port, max_connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        make_handler = self._runner.server
        assert make_handler is not None  # BaseSite.__init__ refused a runner not set up
        live: dict[_Admit, None] = {}  # insertion order: oldest first
        give_back = _GiveBack()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Admit(make_handler, live, self._cap, give_back), self._host, self._port)


async def start_api(node: ApiNode, host: str = "127.0.0.1", port: int = 0, *,
                    header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                    max_connections: int = MAX_CONNECTIONS, max_bodies: int = MAX_BODIES,
                    max_body: int | None = None) -> tuple[web.AppRunner, str]:
    """Serve :func:`make_app` on ``host:port`` (0: a free port) on the running loop.

    Args:
        node: the node to serve (see :func:`make_app`).
        host: the address to listen on (a LAN address lets sensors post).
        port: the TCP port; 0 picks a free one.
        header_timeout: seconds a connection gets to send a whole request head, from
            opening or from the previous answer; then the server closes it.
        body_timeout: seconds a ``POST /ingest`` body gets to arrive whole (else 408).
        max_connections: connections open at once; a further one closes the oldest.
        max_bodies: ``POST /ingest`` bodies read at once; others wait their turn.
        max_body: the largest ``POST /ingest`` body in bytes (default
            :func:`body_limit` of ``node.manifest``); a larger one gets 413.

    Returns:
        ``(runner, url)``; ``await runner.cleanup()`` stops it.

    Raises:
        ValueError: a timeout or count is not positive.
        OSError: ``host:port`` cannot be bound.
    """
    for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout),
                        ("max_connections", max_connections), ("max_bodies", max_bodies),
                        ("max_body", 1 if max_body is None else max_body)):
        if not value > 0:
            raise ValueError(f"start_api: {name} must be positive, not {value!r}")
    app = make_app(node, body_timeout=body_timeout, max_bodies=max_bodies, max_body=max_body)
    # aiohttp's keep-alive timer also runs from the connection's start and closes it if no
    # whole request head came by then: that is the header timeout.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=header_timeout,
                           lingering_time=min(LINGER_TIME, body_timeout))
    await runner.setup()
    try:
        await _CappedSite(runner, host, port, max_connections).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]  # the real port when 0 was asked
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return runner, f"http://{shown}:{bound[1]}"
