#!/usr/bin/env python3
"""Realistic traffic for the example service: Poisson arrivals from a heavy-tailed crowd.

    python loadgen.py --url http://127.0.0.1:8000 --rate 200 --duration 60 --seed 1

Requests arrive as a Poisson process (exponential gaps, mean ``1/rate``), open-loop: a
slow server does not slow the arrivals down, requests wait for a free worker instead
(the summary reports how late they were sent). Each request comes from one of
``--users`` targeting keys (``<prefix>1`` .. ``<prefix>N``), drawn from a Zipf law with
exponent ``--zipf``: user ``k`` is chosen with probability proportional to ``1/k^s``, so
a few users send a large share of the requests, as in real services. The path is drawn
from ``--path PATH=WEIGHT`` (repeatable). The user goes in the ``user`` query parameter.

The schedule (times, users, paths) depends only on ``--seed`` and the options, never on
how fast the server answers. Workers keep their connections open when the server
allows it. The run stops after ``--duration`` seconds of arrivals (or on Ctrl-C) and
prints a summary: requests sent, by status and by path, distinct users, the share of
requests sent by the top 1 % of users, achieved rate and send lag. ``--json`` prints it
as one JSON object instead, ``--users-out FILE`` writes each user's request count.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import http.client
import itertools
import json
import queue
import random
import signal
import sys
import threading
import time
import typing
import urllib.parse


class Crowd:
    """Draws (user, path) pairs: users from a Zipf law, paths by weight."""

    def __init__(
        self,
        rng: random.Random,
        users: int,
        exponent: float,
        paths: list[tuple[str, float]],
        prefix: str,
    ) -> None:
        self.rng = rng
        self.prefix = prefix
        self.user_cdf = list(itertools.accumulate(1.0 / k**exponent for k in range(1, users + 1)))
        self.paths = [p for p, _ in paths]
        self.path_cdf = list(itertools.accumulate(w for _, w in paths))

    def draw(self) -> tuple[str, str]:
        rank = bisect.bisect_right(self.user_cdf, self.rng.random() * self.user_cdf[-1])
        rank = min(rank, len(self.user_cdf) - 1) + 1
        index = bisect.bisect_right(self.path_cdf, self.rng.random() * self.path_cdf[-1])
        path = self.paths[min(index, len(self.paths) - 1)]
        return f"{self.prefix}{rank}", path


def schedule(
    rng: random.Random, rate: float, duration: float, crowd: Crowd
) -> typing.Iterator[tuple[float, str, str]]:
    """The arrivals: (seconds after start, user, path), in time order."""
    t = rng.expovariate(rate)
    while t < duration:
        user, path = crowd.draw()
        yield t, user, path
        t += rng.expovariate(rate)


class Tally:
    """What happened, shared by the workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.paths: collections.Counter[str] = collections.Counter()
        self.users: collections.Counter[str] = collections.Counter()
        self.lags: list[float] = []

    def add(self, status: str, path: str, user: str, lag: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.paths[path] += 1
            self.users[user] += 1
            self.lags.append(lag)


def worker(
    host: str, port: int, base: str, timeout: float, jobs: queue.Queue, tally: Tally
) -> None:
    """Sends the requests it is handed over one connection, reopened when closed."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    while True:
        job = jobs.get()
        if job is None:
            break
        due, user, path = job
        lag = time.monotonic() - due
        target = f"{base}{path}?{urllib.parse.urlencode({'user': user})}"
        try:
            conn.request("GET", target)
            response = conn.getresponse()
            response.read()
            status = str(response.status)
        except (OSError, http.client.HTTPException) as err:
            status = type(err).__name__
            conn.close()
        tally.add(status, path, user, lag)
    conn.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(tally: Tally, elapsed: float, users: int) -> dict[str, typing.Any]:
    counts = sorted(tally.users.values(), reverse=True)
    sent = sum(counts)
    top = max(1, users // 100)  # the top 1 % of the population, by requests sent
    return {
        "sent": sent,
        "statuses": dict(sorted(tally.statuses.items())),
        "paths": dict(sorted(tally.paths.items())),
        "distinct_users": len(counts),
        "top1pct_users": top,
        "top1pct_share": (sum(counts[:top]) / sent) if sent else 0.0,
        "max_user_requests": counts[0] if counts else 0,
        "elapsed_seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "lag_p50_ms": round(1000 * percentile(tally.lags, 0.50), 1),
        "lag_p99_ms": round(1000 * percentile(tally.lags, 0.99), 1),
        "lag_max_ms": round(1000 * max(tally.lags, default=0.0), 1),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=20_000, help="size of the crowd")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent (0: uniform)")
    parser.add_argument("--user-prefix", default="user-")
    parser.add_argument(
        "--path",
        action="append",
        metavar="PATH=WEIGHT",
        help="request PATH with relative WEIGHT (repeatable; default /checkout=1 /search=1)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="worker threads")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--users-out", help="write {user: requests} as JSON here")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration < 0 or args.users < 1 or args.concurrency < 1:
        parser.error("--rate, --users and --concurrency must be positive, --duration >= 0")
    if args.zipf < 0:
        parser.error("--zipf must not be negative")
    paths = []
    for item in args.path or ["/checkout=1", "/search=1"]:
        path, eq, weight = item.partition("=")
        try:
            if not path.startswith("/") or float(weight or "1") <= 0:
                raise ValueError
        except ValueError:
            parser.error(f"--path wants /PATH=WEIGHT with a positive weight, got {item!r}")
        paths.append((path, float(weight or "1")))
    args.paths = paths
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        parser.error(f"--url must be http://HOST[:PORT][/BASE], got {args.url!r}")
    args.host, args.port, args.base = url.hostname, url.port or 80, url.path.rstrip("/")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    crowd = Crowd(rng, args.users, args.zipf, args.paths, args.user_prefix)
    tally = Tally()
    jobs: queue.Queue = queue.Queue()
    workers = [
        threading.Thread(
            target=worker,
            args=(args.host, args.port, args.base, args.timeout, jobs, tally),
            daemon=True,
        )
        for _ in range(args.concurrency)
    ]
    for w in workers:
        w.start()

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    print(
        f"loadgen: seed {args.seed}, {args.rate:g} req/s for {args.duration:g}s, "
        f"{args.users} users (zipf {args.zipf:g}), {args.concurrency} workers -> {args.url}",
        file=sys.stderr,
        flush=True,
    )
    start = time.monotonic()
    for offset, user, path in schedule(rng, args.rate, args.duration, crowd):
        due = start + offset
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        jobs.put((due, user, path))
    for _ in workers:
        jobs.put(None)
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start

    summary = summarize(tally, elapsed, args.users)
    summary["seed"] = args.seed
    if args.users_out:
        with open(args.users_out, "w", encoding="utf-8") as f:
            json.dump(dict(tally.users.most_common()), f)
    if args.json:
        json.dump(summary, sys.stdout)
        print()
    else:
        statuses = " ".join(f"{k}={v}" for k, v in summary["statuses"].items())
        paths = " ".join(f"{k}={v}" for k, v in summary["paths"].items())
        print(
            f"sent {summary['sent']} in {summary['elapsed_seconds']}s "
            f"({summary['rate']} req/s); status {statuses}; paths {paths}\n"
            f"{summary['distinct_users']} distinct users; the top 1% "
            f"({summary['top1pct_users']} users) sent {100 * summary['top1pct_share']:.1f}% "
            f"of requests, the busiest {summary['max_user_requests']}\n"
            f"send lag p50 {summary['lag_p50_ms']}ms p99 {summary['lag_p99_ms']}ms "
            f"max {summary['lag_max_ms']}ms (seed {args.seed})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
