#!/usr/bin/env python3
"""Measures how long the flagd provider (file mode) takes to serve a rewritten document.

    python reload_delay.py [--poll-ms 500] [--trials 60] [--seed 1]

Writes a one-flag document that alternates between 0 % and 100 % for the candidate, at
random moments (uniform gaps of 0-1 s, seeded), each time atomically (temporary file,
rename), and times from the write until (a) an evaluation returns the new variant and
(b) the provider's configuration-changed event has been handled. Prints mean, median,
95th percentile and maximum of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent


def document(weight: int) -> str:
    flag = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", weight], ["off", 1_000_000 - weight]]},
    }
    return json.dumps({"flags": {"f": flag}})


def write_atomically(path: str, text: str) -> None:
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def describe(name: str, seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return (
        f"{name}: n={len(ms)} mean {statistics.mean(ms):.0f} ms, median "
        f"{statistics.median(ms):.0f}, p95 {p95:.0f}, max {ms[-1]:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poll-ms", type=int, help="deadline_ms (default: the provider's)")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "flags.json")
        write_atomically(path, document(0))
        handled: list[float] = []
        changed = threading.Condition()

        def on_change(_details: object) -> None:
            with changed:
                handled.append(time.time())
                changed.notify_all()

        api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
        provider = FlagdProvider(
            resolver_type=ResolverType.FILE,
            offline_flag_source_path=path,
            deadline_ms=args.poll_ms,
        )
        api.set_provider_and_wait(provider)
        client = api.get_client()
        context = EvaluationContext(targeting_key="someone")
        rng = random.Random(args.seed)
        with changed:
            changed.wait_for(lambda: handled, timeout=10)  # the first load

        served, events = [], []
        for trial in range(args.trials):
            time.sleep(rng.random())  # a random moment within the poll cycle
            want = trial % 2 == 0
            seen = len(handled)
            written = time.time()
            write_atomically(path, document(1_000_000 if want else 0))
            while client.get_boolean_value("f", False, context) != want:
                time.sleep(0.001)
            served.append(time.time() - written)
            with changed:
                if not changed.wait_for(lambda n=seen: len(handled) > n, timeout=30):
                    raise SystemExit("the provider served the change but sent no event")
                events.append(handled[seen] - written)
        api.shutdown()

    poll = f"{args.poll_ms} ms" if args.poll_ms else "default"
    print(f"poll {poll}, {args.trials} writes (seed {args.seed})")
    print(describe("write -> new variant served", served))
    print(describe("write -> configuration-changed handled", events))


if __name__ == "__main__":
    main()
