"""Benchmark of the sensor feeder in --via mode: peak RSS and sustained readings per second.

Usage: python bench/sensor.py [--readings 100000] [--rows 1000] [--rate max]

1. Makes a swarm (iris-mlp schema: 4 float32 features, 3 classes; default pow_bits 12) and a
   CSV of ``--readings`` rows.
2. Starts a stand-in trainer node in a subprocess: ``POST /ingest`` over
   ``learnae.ingest.handle_ingest`` with the swarm's real tangle (every chunk and signed
   transaction is fully checked and stored; the chunk is not added to IPFS).
3. Runs ``python -m learnae.sensor_cli run --via URL --source csv:...`` in another
   subprocess, as a Pi would, and measures its wall time (start to last acknowledgement,
   interpreter start included) and its peak resident set (``ru_maxrss`` from ``wait4``).

Targets (issue #5): peak RSS <= 60 MB, >= 1,000 readings/s sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def serve(directory: str, port_file: str) -> None:
    """The stand-in trainer node (runs in its own process)."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from learnae.content import content_id
    from learnae.ingest import handle_ingest
    from learnae.state import open_tangle

    tangle, manifest = open_tangle(directory)

    class Ipfs:
        async def add(self, data: bytes) -> str:
            return content_id(data)

    ipfs = Ipfs()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, answer = asyncio.run(handle_ingest(body, manifest=manifest, tangle=tangle,
                                                       ipfs=ipfs))
            out = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(httpd.server_port))
    httpd.serve_forever()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=1000, help="readings per chunk")
    ap.add_argument("--rate", default="max", help="CSV replay rate, e.g. 2000/s or max")
    ap.add_argument("--serve", nargs=2, metavar=("DIR", "PORTFILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0

    from learnae.manifest import Manifest
    from learnae.models import model_config
    from learnae.state import init_swarm

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        init_swarm(t / "swarm", Manifest(name="bench", model=model_config("iris-mlp")))
        csv_path = t / "series.csv"
        with csv_path.open("w") as f:
            f.write("time,a,b,c,d,label\n")
            for i in range(args.readings):
                f.write(f"{i},{i % 97 / 10:.2f},{i % 89 / 10:.2f},{i % 83 / 10:.2f},"
                        f"{i % 79 / 10:.2f},{i % 3}\n")
        port_file = t / "port"
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(t / "swarm"),
                                   str(port_file)])
        try:
            for _ in range(200):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            cmd = [sys.executable, "-m", "learnae.sensor_cli", "run",
                   "--invite", str(t / "swarm" / "invite.json"), "--state", str(t / "pi"),
                   "--source", f"csv:{csv_path},rate={args.rate}", "--via", url,
                   "--rows", str(args.rows), "--max-age", "2"]
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait()
        if status != 0:
            print(f"sensor failed with status {status}", file=sys.stderr)
            return 1
        stats = json.loads(out.decode().strip().splitlines()[-1])
        rss_mb = usage.ru_maxrss / 1024
        rate = stats["published_rows"] / wall
        print(f"readings            {args.readings:,} (chunks of {args.rows}, replay rate"
              f" {args.rate})")
        print(f"published           {stats['published_rows']:,} rows in"
              f" {stats['published']:,} chunks, rejected {stats['rejected']}")
        print(f"wall time           {wall:.2f} s (process start to last acknowledgement)")
        print(f"throughput          {rate:,.0f} readings/s   (target >= 1,000)")
        print(f"peak RSS            {rss_mb:.1f} MB   (target <= 60 MB)")
        ok = stats["published_rows"] == args.readings and rss_mb <= 60 and rate >= 1000
        print("result              " + ("OK" if ok else "MISSED A TARGET"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
