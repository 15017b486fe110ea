#!/usr/bin/env python3
"""A long-lived app that evaluates flags with the real OpenFeature Python SDK and the
flagd provider, its flags delivered either by a gRPC sync server in in-process mode
(Sluice's sync server, ``--resolver in-process``) or by a flag file the provider polls
(``--resolver file``): the consumer the sync tests and the delivery-latency benchmark
drive.

It prints ``{"ready": true}`` (one JSON line on stdout) once the provider is READY, or
``{"ready": false, "error": ...}`` and exits 1. Then it reads commands, one JSON object
per line on stdin, and answers each with one JSON line:

    {"op": "evaluate", "flag": F, "type": "boolean", "keys": N, "key_prefix": "user-"}
        -> {"ok": true, "variants": [variant per key], "values": {variant: value},
            "reasons": {reason: count}, "errors": count}
    {"op": "wait", "flag": F, "type": ..., "keys": N | [targeting keys], "key_prefix": ..,
     "variant": V, "timeout": seconds}
        evaluates the keys over and over until every one of them gets V
        -> {"ok": true, "at": unix time of the first all-V pass, "passes": n}
        or {"ok": false, "error": "...", "last": {variant: count}}
    {"op": "quit"}

Evaluation errors are counted, never hidden: "variants" holds null for them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus

DEFAULTS: dict[str, typing.Any] = {
    "boolean": False,
    "string": "",
    "integer": 0,
    "float": 0.0,
    "object": {},
}


def keys_of(command: dict[str, typing.Any]) -> list[str]:
    keys = command.get("keys", 1)
    if isinstance(keys, list):
        return [str(k) for k in keys]
    prefix = command.get("key_prefix", "user-")
    return [f"{prefix}{i}" for i in range(int(keys))]


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        if args.resolver == "in-process":
            self.provider = FlagdProvider(
                resolver_type=ResolverType.IN_PROCESS,
                host=args.host,
                port=args.port,
                selector=args.selector,
                tls=args.tls_cert is not None,
                cert_path=args.tls_cert,
                deadline_ms=args.deadline_ms,
                retry_backoff_ms=args.retry_backoff_ms,
                retry_backoff_max_ms=args.retry_backoff_ms,
            )
        else:
            # openfeature-provider-flagd 0.6.1 re-reads the file (when its mtime moved)
            # every deadline_ms, not every FLAGD_OFFLINE_POLL_MS: --poll-ms sets that.
            self.provider = FlagdProvider(
                resolver_type=ResolverType.FILE,
                offline_flag_source_path=args.document,
                deadline_ms=args.poll_ms,
            )
        api.set_provider_and_wait(self.provider, domain="sluice-sync-app")
        self.client = api.get_client(domain="sluice-sync-app")
        status = self.client.get_provider_status()
        if status != ProviderStatus.READY:
            raise RuntimeError(f"the provider is {status}, not READY")

    def evaluate_one(self, flag: str, flag_type: str, key: str) -> tuple[typing.Any, ...]:
        resolve = getattr(self.client, f"get_{flag_type}_details")
        details = resolve(flag, DEFAULTS[flag_type], EvaluationContext(targeting_key=key))
        if details.error_code is not None or details.reason == "ERROR":
            return (None, None, "ERROR")
        reason = str(details.reason) if details.reason is not None else "None"
        return (details.variant, details.value, reason)

    def evaluate(self, command: dict[str, typing.Any]) -> dict[str, typing.Any]:
        flag, flag_type = command["flag"], command.get("type", "boolean")
        variants: list[str | None] = []
        values: dict[str, typing.Any] = {}
        reasons: dict[str, int] = {}
        errors = 0
        for key in keys_of(command):
            variant, value, reason = self.evaluate_one(flag, flag_type, key)
            if reason == "ERROR":
                errors += 1
            else:
                values[str(variant)] = value
            variants.append(variant)
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "ok": True,
            "variants": variants,
            "values": values,
            "reasons": reasons,
            "errors": errors,
        }

    def wait(self, command: dict[str, typing.Any]) -> dict[str, typing.Any]:
        flag, flag_type = command["flag"], command.get("type", "boolean")
        want = command["variant"]
        keys = keys_of(command)
        deadline = time.monotonic() + float(command.get("timeout", 60))
        passes = 0
        last: dict[str, int] = {}
        while time.monotonic() < deadline:
            passes += 1
            last = {}
            for key in keys:
                variant = self.evaluate_one(flag, flag_type, key)[0]
                last[str(variant)] = last.get(str(variant), 0) + 1
            if last.get(str(want), 0) == len(keys):
                return {"ok": True, "at": time.time(), "passes": passes}
            time.sleep(0.001)
        return {"ok": False, "error": f"not every key got {want!r} in time", "last": last}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolver", choices=["in-process", "file"], default="in-process")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8015)
    parser.add_argument("--selector")
    parser.add_argument("--tls-cert", help="CA certificate (PEM) of a TLS sync server")
    parser.add_argument("--document", help="flag file (file resolver)")
    parser.add_argument("--poll-ms", type=int, default=500, help="file resolver's poll")
    parser.add_argument("--deadline-ms", type=int, default=10000)
    parser.add_argument("--retry-backoff-ms", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        app = App(args)
    except Exception as err:  # the provider's initialisation failures
        print(json.dumps({"ready": False, "error": f"{type(err).__name__}: {err}"}), flush=True)
        return 1
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        op = command.get("op")
        if op == "quit":
            break
        if op == "evaluate":
            answer = app.evaluate(command)
        elif op == "wait":
            answer = app.wait(command)
        else:
            answer = {"ok": False, "error": f"unknown op {op!r}"}
        print(json.dumps(answer), flush=True)
    app.provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
