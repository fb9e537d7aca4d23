"""The trainer node's HTTP API (aiohttp), on 127.0.0.1 unless told otherwise.

Routes:

- ``/status``: JSON: peer id, author id, addresses, peers, local step, last checkpoint,
  latest metrics (own held-out data and the common test split), merges done, rejections
  counted by reason, ledger counts (:meth:`learnae.node.TrainerNode.status`).
- ``/metrics``: the same counters in the Prometheus text exposition format (0.0.4).
- ``/ledger/tips``: JSON: the tangle's tips and transaction count.
- ``POST /ingest``: a sensor's data chunk and its signed ``data`` transaction, as JSON
  ``{"chunk": base64, "tx": base64}``. The node checks signature, admission, schema and
  limits (:func:`learnae.sensor.check_ingest`), then adds and pins the chunk, stores the
  transaction and gossips it. 200 ``{"tx", "cid", "tips"}``, or 4xx/5xx
  ``{"error": code, "reason": text}``. ``GET /ingest``: the tips a sensor should approve.

It runs on the node's network loop, the loop that owns the tangle.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from learnae.sensor import handle_ingest, ingest_info

__all__ = ["make_app", "prometheus_text", "start_api"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(status: dict[str, Any]) -> str:
    """Render a node status (as :meth:`TrainerNode.status` returns) as Prometheus text."""
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
    metric("peers", "gauge", "Connected IPFS peers.", [({}, status.get("peers", 0))])
    metric("checkpoints_published", "counter", "Checkpoints published by this run.",
           [({}, status.get("published", 0))])
    metric("merges", "counter", "Merges that used at least one peer checkpoint.", [({}, status.get("merges", 0))])
    metric("rejections", "counter", "Peer checkpoints refused, by reason.",
           [({"reason": k}, v) for k, v in sorted(status.get("rejections", {}).items())])
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


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Answer HTTP errors (404, 405, a body over the size limit, ...) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason.lower().replace(" ", "-"),
                                  "reason": exc.text or exc.reason}, status=exc.status)


def make_app(node: Any) -> web.Application:
    """The aiohttp application for ``node``: anything with ``status()``, ``tangle``,
    ``manifest``, ``ipfs`` and (optionally) ``sync``, as :class:`learnae.node.TrainerNode`."""

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(node.status())

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(node.status()), content_type="text/plain",
                            charset="utf-8", headers={"X-Prometheus-Format": "0.0.4"})

    async def tips(_request: web.Request) -> web.Response:
        tangle = node.tangle
        if tangle is None:
            raise web.HTTPServiceUnavailable(text="the ledger is closed")
        return web.json_response({"tips": sorted(tangle.tips()), "count": tangle.count()})

    def ledger():
        if node.tangle is None or node.ipfs is None:
            raise web.HTTPServiceUnavailable(text="the node is starting or stopping")
        return node.tangle

    async def ingest(request: web.Request) -> web.Response:
        tangle = ledger()
        sync = getattr(node, "sync", None)
        code, body = await handle_ingest(await request.read(), manifest=node.manifest, tangle=tangle,
                                         ipfs=node.ipfs, publish=sync.publish if sync else None)
        return web.json_response(body, status=code)

    async def ingest_tips(_request: web.Request) -> web.Response:
        return web.json_response(ingest_info(ledger()))

    # A chunk travels base64-encoded: allow the swarm's chunk limit plus a third, plus the tx.
    manifest = getattr(node, "manifest", None)
    body_limit = manifest.limits.chunk_bytes * 4 // 3 + (64 << 10) if manifest else 1 << 20
    app = web.Application(client_max_size=body_limit, middlewares=[_json_errors])
    app.router.add_post("/ingest", ingest)
    app.router.add_get("/ingest", ingest_tips)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ledger/tips", tips)
    return app


async def start_api(node: Any, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve :func:`make_app` on ``host:port`` (0: a free port) on the running loop.

    Returns:
        ``(runner, url)``; ``await runner.cleanup()`` stops it.
    """
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()  # the real port when 0 was asked
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return runner, f"http://{shown}:{bound[1]}"
