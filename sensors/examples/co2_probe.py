#!/usr/bin/env python3
"""Example probe: replays a monthly CO2 series as sensor readings, one JSON line each.

Use it as a learnae sensor source (stdlib only, no learnae import):

    learnae sensor run --invite invite.json --state ~/.learnae-sensor \
        --source "cmd:python3 sensors/examples/co2_probe.py --rate 10"

Each reading is a window of the last 4 month-over-month changes (ppm) and a label: what
the next month does, 0 = falls (< -0.3 ppm), 1 = flat, 2 = rises (> 0.3 ppm). That fits a
swarm made with ``learnae init DIR --name co2 --model iris-mlp`` (4 float32 features,
3 classes). Readings carry no ``t``: the feeder stamps them with the time it reads them
(a replay of 1958-2001 would predate the Unix epoch, which chunk time ranges cannot).

The series: ``--csv PATH`` (columns ``date,co2``; ``date`` as YYYY-MM[-DD]), by default
``co2_monthly.csv`` next to this script: the real Mauna Loa record (1958-2001) as bundled
with statsmodels, averaged by month. With ``--statsmodels`` it reads the same data from the
installed statsmodels package instead. Replace it with a real probe by printing your own lines:
``{"x": [4 numbers], "y": 0|1|2}``, or ``{"x": [...]}`` for a sensor run with --unlabelled.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import json
import sys
import time
from pathlib import Path

WINDOW = 4
FLAT = 0.3


def load_csv(path: Path) -> list[tuple[int, float]]:
    """``(ms relative to the Unix epoch, ppm)`` per row; rows that do not parse are skipped."""
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                parts = [int(p) for p in row["date"].split("-")[:3]]
                year, month = parts[0], parts[1]
                day = parts[2] if len(parts) > 2 else 15
                ms = calendar.timegm((year, month, day, 0, 0, 0)) * 1000
                out.append((ms, float(row["co2"])))
            except (KeyError, ValueError, TypeError):
                continue
    return out


def load_statsmodels() -> list[tuple[int, float]]:
    from statsmodels.datasets import co2  # optional; only if installed

    weekly = co2.load_pandas().data["co2"].resample("MS").mean().interpolate()
    return [(int(ts.timestamp() * 1000), float(v)) for ts, v in weekly.items()]


def readings(series: list[tuple[int, float]]):
    changes = [(t, b - a) for (_, a), (t, b) in zip(series, series[1:], strict=False)]
    for i in range(WINDOW, len(changes)):
        window = [round(d, 3) for _, d in changes[i - WINDOW:i]]
        nxt = changes[i][1]
        label = 0 if nxt < -FLAT else 2 if nxt > FLAT else 1
        yield {"x": window, "y": label}


def main() -> int:
    ap = argparse.ArgumentParser(description="Replay a monthly CO2 series as JSON lines.")
    ap.add_argument("--csv", type=Path, default=Path(__file__).with_name("co2_monthly.csv"))
    ap.add_argument("--statsmodels", action="store_true",
                    help="use statsmodels' bundled Mauna Loa data instead of --csv")
    ap.add_argument("--rate", type=float, default=0.0, help="readings per second (0: no wait)")
    ap.add_argument("--loop", action="store_true", help="start over at the end, forever")
    args = ap.parse_args()
    series = load_statsmodels() if args.statsmodels else load_csv(args.csv)
    if len(series) <= WINDOW + 1:
        print(f"co2_probe: {args.csv} holds too few rows", file=sys.stderr)
        return 1
    while True:
        for reading in readings(series):
            print(json.dumps(reading), flush=True)
            if args.rate > 0:
                time.sleep(1.0 / args.rate)
        if not args.loop:
            return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)
