#!/usr/bin/env python3
"""A small HTTP service whose code paths are chosen by feature flags.

Each route evaluates one boolean flag with the OpenFeature SDK and the flagd provider in
file mode (the flag document Sluice writes): ``true`` serves the candidate code path,
``false`` the baseline. Requests are attributed to the variant they were served and
exported as Prometheus metrics on ``/metrics`` by ``sluice_openfeature``.

    python service.py --flags flags.json --port 8000 \\
        --route /checkout=new-checkout --route /search=new-search \\
        --fault new-search:errors=0.2,latency=0.3,after=60s

    curl 'localhost:8000/checkout?user=alice'     # or: -H 'X-User: alice'

    python service.py --flags flags.json --sticky-bad-user user-2:0.3

The targeting key is the ``user`` query parameter or the ``X-User`` header; without one
the flag falls back to its default (the baseline). Faults apply to the candidate path of
one flag only, from ``after`` seconds after start: ``errors`` is the share of its
requests answered 500, ``latency`` seconds are added to each. The first request a fault
touches is logged (``first injected fault flag=... unix=...``) and its time exported as
``fault_first_injected_timestamp_seconds{feature_flag_key}``.

``--sticky-bad-user USER:PROB`` makes one user fail more for a reason that has nothing
to do with any flag (an old client, a bot): each of that user's requests, on every route
and whichever variant it is served, is answered 500 with probability ``PROB``. Counted in
``fault_injected_total{feature_flag_key, kind="user"}``; it is not a flag's fault, so it
never sets ``fault_first_injected_timestamp_seconds``. A flag whose candidate cohort holds
such a heavy user is healthy, yet its candidate's error rate is higher than the
baseline's just by who is in it: what user-level statistics (``perUser``) are for.

``--slow-threshold`` is the latency above which the per-user sums count a request as
slow (``sluice_user_slow_*``): it must equal the rollout's histogram ``threshold``.

Other endpoints: ``/metrics`` (Prometheus), ``/healthz``. SIGTERM or SIGINT stops the
server after the requests in flight; the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socketserver
import sys
import threading
import time
import typing
import urllib.parse
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import prometheus_client
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from prometheus_client import Counter, Gauge

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sluice_openfeature import FlagMetrics  # noqa: E402

log = logging.getLogger("service")

DEFAULT_ROUTES = ("/checkout=new-checkout", "/search=new-search")


@dataclass(frozen=True)
class Fault:
    """Harm done to one flag's candidate path, from ``after`` seconds after start."""

    errors: float = 0.0
    latency: float = 0.0
    after: float = 0.0

    @staticmethod
    def parse(spec: str) -> tuple[str, Fault]:
        """Parses ``FLAG:errors=0.2,latency=0.3,after=60s`` (every field optional)."""
        flag, sep, fields = spec.partition(":")
        if not sep or not flag:
            raise ValueError(f"--fault wants FLAG:errors=R,latency=S,after=D, got {spec!r}")
        values: dict[str, float] = {}
        for field in filter(None, fields.split(",")):
            name, eq, value = field.partition("=")
            if not eq or name not in ("errors", "latency", "after"):
                raise ValueError(f"--fault {spec!r}: unknown field {field!r}")
            values[name] = parse_seconds(value) if name != "errors" else float(value)
        fault = Fault(**values)
        if not 0.0 <= fault.errors <= 1.0:
            raise ValueError(f"--fault {spec!r}: errors must be a share in [0, 1]")
        if fault.latency < 0 or fault.after < 0:
            raise ValueError(f"--fault {spec!r}: latency and after must not be negative")
        return flag, fault


def parse_bad_user(spec: str) -> tuple[str, float]:
    """Parses ``USER:PROB`` (``--sticky-bad-user``): a targeting key and a share in [0, 1]."""
    user, sep, prob = spec.rpartition(":")
    try:
        share = float(prob)
    except ValueError:
        share = -1.0
    if not sep or not user or not 0.0 <= share <= 1.0:
        raise ValueError(
            f"--sticky-bad-user wants USER:PROB with PROB a share in [0, 1], got {spec!r}"
        )
    return user, share


def parse_seconds(text: str) -> float:
    """``1.5``, ``300ms``, ``60s``, ``2m`` -> seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


class Service:
    """The WSGI application: routes, flag evaluation, the two code paths, faults."""

    def __init__(
        self,
        routes: dict[str, str],
        faults: dict[str, Fault],
        work_seconds: float,
        rng: random.Random,
        bad_users: dict[str, float] | None = None,
    ) -> None:
        self.routes = routes
        self.faults = faults
        self.bad_users = dict(bad_users or {})
        self.work_seconds = work_seconds
        self.rng = rng
        self.client = api.get_client()
        self.started = time.monotonic()
        self.metrics_app = prometheus_client.make_wsgi_app()
        self.fault_first = Gauge(
            "fault_first_injected_timestamp_seconds",
            "When the first request on the flag's candidate path met an injected fault.",
            ["feature_flag_key"],
        )
        self.fault_count = Counter(
            "fault_injected",
            "Requests on the candidate path that met an injected fault, by kind.",
            ["feature_flag_key", "kind"],
        )
        self._first_lock = threading.Lock()
        self._first_seen: set[str] = set()

    def __call__(self, environ: dict, start_response: typing.Callable) -> typing.Iterable:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self.metrics_app(environ, start_response)
        if path == "/healthz":
            return respond(start_response, 200, {"status": "ok"})
        flag = self.routes.get(path)
        if flag is None:
            return respond(start_response, 404, {"error": f"no route {path}"})
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        user = query.get("user", [None])[0] or environ.get("HTTP_X_USER") or None

        details = self.client.get_boolean_details(
            flag, False, EvaluationContext(targeting_key=user)
        )
        candidate = details.value is True
        body = {
            "flag": flag,
            "variant": details.variant,
            "reason": str(details.reason),
            "path": "candidate" if candidate else "baseline",
            "user": user,
        }
        # The work both paths do: exponentially distributed, mean work_seconds.
        if self.work_seconds > 0:
            time.sleep(self.rng.expovariate(1.0 / self.work_seconds))
        fault = self.faults.get(flag) if candidate else None
        if fault is not None and time.monotonic() - self.started >= fault.after:
            failed = self.rng.random() < fault.errors
            if fault.latency > 0 or failed:
                self.first_fault(flag)
            if fault.latency > 0:
                self.fault_count.labels(flag, "latency").inc()
                time.sleep(fault.latency)
            if failed:
                self.fault_count.labels(flag, "error").inc()
                return respond(start_response, 500, {**body, "error": "injected fault"})
        # A user who fails more whatever it is served (an old client): not the flag's fault.
        bad = self.bad_users.get(user) if user else None
        if bad is not None and self.rng.random() < bad:
            self.fault_count.labels(flag, "user").inc()
            return respond(start_response, 500, {**body, "error": "sticky bad user"})
        return respond(start_response, 200, body)

    def first_fault(self, flag: str) -> None:
        with self._first_lock:
            if flag in self._first_seen:
                return
            self._first_seen.add(flag)
        now = time.time()
        self.fault_first.labels(flag).set(now)
        log.warning("first injected fault flag=%s unix=%.3f", flag, now)


def respond(start_response: typing.Callable, code: int, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[code]
    start_response(
        f"{code} {reason}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """The standard library's WSGI server, one thread per connection."""

    daemon_threads = False  # server_close() waits for the requests in flight
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: typing.Any) -> None:  # noqa: A002
        pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--flags",
        default=os.environ.get("FLAGD_OFFLINE_FLAG_SOURCE_PATH"),
        help="the flagd JSON document (default: $FLAGD_OFFLINE_FLAG_SOURCE_PATH)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument(
        "--route",
        action="append",
        metavar="PATH=FLAG",
        help=f"serve FLAG on PATH (repeatable; default {' '.join(DEFAULT_ROUTES)})",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="FLAG:errors=R,latency=S,after=D",
        help="fault on FLAG's candidate path (repeatable)",
    )
    parser.add_argument(
        "--sticky-bad-user",
        action="append",
        default=[],
        metavar="USER:PROB",
        help="USER's requests fail with probability PROB on every route and variant "
        "(an old client: not a flag's fault; repeatable)",
    )
    parser.add_argument(
        "--slow-threshold",
        type=parse_seconds,
        default=0.25,
        help="latency above which the per-user sums count a request as slow; must equal "
        "the rollout's histogram threshold (default 0.25s)",
    )
    parser.add_argument(
        "--work",
        type=parse_seconds,
        default=0.005,
        help="mean time both paths spend on a request (default 5ms)",
    )
    parser.add_argument(
        "--flag-poll",
        type=parse_seconds,
        help="how often the provider checks the file for changes (flagd's deadline_ms; "
        "default $FLAGD_DEADLINE_MS or 500ms)",
    )
    parser.add_argument("--seed", type=int, help="seed for the work times and faults")
    args = parser.parse_args(argv)
    if not args.flags:
        parser.error("give --flags or set FLAGD_OFFLINE_FLAG_SOURCE_PATH")
    routes = {}
    for item in args.route or DEFAULT_ROUTES:
        path, eq, flag = item.partition("=")
        if not eq or not path.startswith("/") or not flag:
            parser.error(f"--route wants /PATH=FLAG, got {item!r}")
        routes[path] = flag
    args.routes = routes
    try:
        args.faults = dict(Fault.parse(spec) for spec in args.fault)
    except ValueError as err:
        parser.error(str(err))
    try:
        args.bad_users = dict(parse_bad_user(spec) for spec in args.sticky_bad_user)
    except ValueError as err:
        parser.error(str(err))
    if args.slow_threshold < 0:
        parser.error("--slow-threshold must not be negative")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03dZ %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    logging.Formatter.converter = time.gmtime
    # The flagd provider warns on every evaluation without a targeting key; keep errors.
    logging.getLogger("openfeature.contrib").setLevel(logging.ERROR)
    prometheus_client.disable_created_metrics()

    metrics = FlagMetrics(slow_threshold=args.slow_threshold)
    metrics.install()
    poll_ms = None if args.flag_poll is None else max(1, round(args.flag_poll * 1000))
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE,
        offline_flag_source_path=args.flags,
        deadline_ms=poll_ms,
    )
    try:
        api.set_provider_and_wait(provider)
    except Exception as err:  # the provider wraps the cause; show it
        cause = err.__cause__ or err
        log.error("cannot load the flag document %s: %s", args.flags, cause)
        return 1
    if not metrics.wait_for_configuration():
        log.error("the provider loaded %s but announced no configuration", args.flags)
        return 1

    app = Service(
        args.routes, args.faults, args.work, random.Random(args.seed), args.bad_users
    )
    server = ThreadingWSGIServer((args.host, args.port), QuietHandler)
    server.set_app(metrics.wsgi(app))
    port = server.server_address[1]
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    routes = " ".join(f"{p}->{f}" for p, f in args.routes.items())
    faults = " ".join(f"{f}:{fault}" for f, fault in args.faults.items()) or "none"
    bad = " ".join(f"{u}:{p:g}" for u, p in args.bad_users.items()) or "none"
    log.info(
        "flags %s; routes %s; faults %s; sticky bad users %s; slow above %gs",
        args.flags, routes, faults, bad, args.slow_threshold,
    )
    print(f"listening on http://{args.host}:{port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="serve")
    serving.start()
    stop.wait()
    log.info("stopping")
    server.shutdown()
    serving.join()
    server.server_close()
    api.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
