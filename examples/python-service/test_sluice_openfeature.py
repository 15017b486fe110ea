"""Unit tests of sluice_openfeature with the real flagd provider in file mode.

    python -m unittest discover -s examples/python-service -v

tests/python_service.rs runs them with the project's .venv in `cargo test`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
import unittest
import wsgiref.util

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from prometheus_client import CollectorRegistry

from sluice_openfeature import FlagMetrics

# The provider logs a warning for every evaluation without a targeting key, and an error
# when its polling thread outlives a test's directory.
logging.getLogger("openfeature.contrib").setLevel(logging.CRITICAL)

SCALE = 1_000_000
DEADLINE = 10.0  # seconds any wait in these tests may take


def document(checkout_weight: int, search_weight: int = SCALE // 2) -> str:
    def flag(weight: int) -> dict:
        return {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"fractional": [["on", weight], ["off", SCALE - weight]]},
        }

    return json.dumps(
        {"flags": {"new-checkout": flag(checkout_weight), "new-search": flag(search_weight)}}
    )


def write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Fixture(unittest.TestCase):
    """A flag file at 50 %, the provider reading it (polling every 20 ms), fresh metrics."""

    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "flags.json")
        write_atomically(self.path, document(SCALE // 2))
        self.registry = CollectorRegistry()
        self.metrics = FlagMetrics(self.registry)
        self.metrics.install()
        api.set_provider_and_wait(
            FlagdProvider(
                resolver_type=ResolverType.FILE,
                offline_flag_source_path=self.path,
                deadline_ms=20,
            )
        )
        self.assertTrue(self.metrics.wait_for_configuration())
        self.client = api.get_client()

    def tearDown(self) -> None:
        api.remove_handler(
            ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self.metrics.on_configuration_changed
        )
        api.clear_hooks()
        api.shutdown()
        self.dir.cleanup()

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def requests(self, flag: str, variant: str, code: str, reason="TARGETING_MATCH") -> float:
        return self.value(
            "http_requests_total",
            feature_flag_key=flag,
            feature_flag_result_variant=variant,
            feature_flag_result_reason=reason,
            code=code,
        )

    def users(self, flag: str, variant: str, reason: str = "TARGETING_MATCH") -> float:
        return self.value(
            "feature_flag_users_total",
            feature_flag_key=flag,
            feature_flag_result_variant=variant,
            feature_flag_result_reason=reason,
        )

    def evaluate(self, flag: str, user: str | None) -> str:
        details = self.client.get_boolean_details(flag, False, EvaluationContext(user))
        return str(details.variant)

    def user_on(self, flag: str, variant: str) -> str:
        """A targeting key the flag serves `variant` to."""
        for i in range(1000):
            if self.evaluate(flag, f"probe-{i}") == variant:
                return f"probe-{i}"
        raise AssertionError(f"no probe user gets {variant}")


def wsgi_app(client, fail: bool = False):
    """Evaluates the flag named by the path for the `user` query parameter."""

    def app(environ, start_response):
        query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if p)
        flag = environ["PATH_INFO"].strip("/")
        if flag in ("new-checkout", "new-search"):
            client.get_boolean_value(flag, False, EvaluationContext(query.get("user")))
        if fail:
            raise RuntimeError("boom")
        code = "500 Internal Server Error" if query.get("code") == "500" else "200 OK"
        start_response(code, [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def call_wsgi(app, path: str, query: str = "") -> str:
    environ: dict = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ["PATH_INFO"], environ["QUERY_STRING"] = path, query
    status = []
    body = app(environ, lambda s, h, e=None: status.append(s))
    try:
        b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return status[0]


class WsgiTest(Fixture):
    def test_each_request_is_recorded_with_the_variant_it_was_served(self) -> None:
        app = self.metrics.wsgi(wsgi_app(self.client))
        user = self.user_on("new-checkout", "on")
        self.assertEqual(call_wsgi(app, "/new-checkout", f"user={user}"), "200 OK")
        call_wsgi(app, "/new-checkout", f"user={user}&code=500")
        other = self.user_on("new-checkout", "off")
        call_wsgi(app, "/new-checkout", f"user={other}")
        self.assertEqual(self.requests("new-checkout", "on", "200"), 1)
        self.assertEqual(self.requests("new-checkout", "on", "500"), 1)
        self.assertEqual(self.requests("new-checkout", "off", "200"), 1)
        labels = dict(
            feature_flag_key="new-checkout",
            feature_flag_result_variant="on",
            feature_flag_result_reason="TARGETING_MATCH",
        )
        self.assertEqual(self.value("http_request_duration_seconds_count", **labels), 2)
        self.assertEqual(self.value("http_request_duration_seconds_bucket", le="+Inf", **labels), 2)

    def test_without_a_targeting_key_the_reason_says_so_and_no_user_is_counted(self) -> None:
        app = self.metrics.wsgi(wsgi_app(self.client))
        call_wsgi(app, "/new-checkout")
        self.assertEqual(self.requests("new-checkout", "off", "200", reason="DEFAULT"), 1)
        self.assertEqual(self.users("new-checkout", "off", reason="DEFAULT"), 0)

    def test_an_exception_is_a_500_and_still_propagates(self) -> None:
        app = self.metrics.wsgi(wsgi_app(self.client, fail=True))
        user = self.user_on("new-search", "on")
        with self.assertRaises(RuntimeError):
            call_wsgi(app, "/new-search", f"user={user}")
        self.assertEqual(self.requests("new-search", "on", "500"), 1)

    def test_requests_without_flags_and_skipped_paths(self) -> None:
        app = self.metrics.wsgi(wsgi_app(self.client))
        call_wsgi(app, "/other")
        call_wsgi(app, "/metrics")
        # Empty flag labels: one request, not two (/metrics is not recorded).
        self.assertEqual(
            self.value(
                "http_requests_total",
                feature_flag_key="",
                feature_flag_result_variant="",
                feature_flag_result_reason="",
                code="200",
            ),
            1,
        )


class UsersTest(Fixture):
    def test_each_user_counts_once_per_variant_until_the_flag_changes(self) -> None:
        on = [u for u in (f"u{i}" for i in range(200)) if self.evaluate("new-checkout", u) == "on"]
        off_count = 200 - len(on)
        self.assertTrue(0 < len(on) < 200)
        for i in range(200):  # again: nobody new
            self.evaluate("new-checkout", f"u{i}")
        self.assertEqual(self.users("new-checkout", "on"), len(on))
        self.assertEqual(self.users("new-checkout", "off"), off_count)

        # Another flag changed: this one's users are not counted again.
        self.metrics.on_configuration_changed(
            EventDetails(provider_name="test", flags_changed=["new-search"])
        )
        for i in range(200):
            self.evaluate("new-checkout", f"u{i}")
        self.assertEqual(self.users("new-checkout", "on"), len(on))

        # This flag changed: everybody active from now on is counted once more.
        self.metrics.on_configuration_changed(
            EventDetails(provider_name="test", flags_changed=["new-checkout"])
        )
        for i in range(200):
            self.evaluate("new-checkout", f"u{i}")
            self.evaluate("new-checkout", f"u{i}")
        self.assertEqual(self.users("new-checkout", "on"), 2 * len(on))
        self.assertEqual(self.users("new-checkout", "off"), 2 * off_count)

    def test_rewriting_the_file_forgets_the_changed_flag_only(self) -> None:
        keys = [f"k{i}" for i in range(300)]
        before = {k: self.evaluate("new-checkout", k) for k in keys}
        for k in keys:
            self.evaluate("new-search", k)
        search_users = self.users("new-search", "on") + self.users("new-search", "off")
        self.assertEqual(search_users, len(keys))

        changed = "feature_flag_configuration_changed_timestamp_seconds"
        seen_at = self.value(changed, feature_flag_key="new-checkout")
        write_atomically(self.path, document(SCALE))  # new-checkout to 100 %
        deadline = time.monotonic() + DEADLINE
        while self.value(changed, feature_flag_key="new-checkout") == seen_at:
            self.assertLess(time.monotonic(), deadline, "the provider never reloaded")
            time.sleep(0.01)
        self.assertEqual(self.evaluate("new-checkout", keys[0]), "on")

        for k in keys:
            self.evaluate("new-checkout", k)
            self.evaluate("new-search", k)
        # Every key counted once more, on the candidate; nobody on the baseline again.
        was_on = sum(v == "on" for v in before.values())
        self.assertEqual(self.users("new-checkout", "on"), was_on + len(keys))
        self.assertEqual(self.users("new-checkout", "off"), len(keys) - was_on)
        # new-search did not change: its users are not counted again.
        self.assertEqual(
            self.users("new-search", "on") + self.users("new-search", "off"), search_users
        )


class AsgiTest(Fixture):
    def call(self, app, path: str, user: str | None = None) -> list[dict]:
        sent: list[dict] = []
        scope = {"type": "http", "path": path, "user": user}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(app(scope, receive, send))
        return sent

    def test_each_request_is_recorded_with_the_variant_it_was_served(self) -> None:
        client = self.client

        async def app(scope, receive, send):
            flag = scope["path"].strip("/")
            # In a worker thread, as frameworks do for blocking code: the context follows.
            await asyncio.to_thread(
                client.get_boolean_value, flag, False, EvaluationContext(scope["user"])
            )
            if scope["user"] == "crash":
                raise RuntimeError("boom")
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        wrapped = self.metrics.asgi(app)
        user = self.user_on("new-search", "off")
        sent = self.call(wrapped, "/new-search", user)
        self.assertEqual(sent[0]["status"], 201)
        self.assertEqual(self.requests("new-search", "off", "201"), 1)
        self.assertEqual(self.users("new-search", "off"), 1)
        crash_variant = self.evaluate("new-search", "crash")
        with self.assertRaises(RuntimeError):
            self.call(wrapped, "/new-search", "crash")
        self.assertEqual(self.requests("new-search", crash_variant, "500"), 1)
        self.call(wrapped, "/metrics")
        total = sum(
            s.value
            for m in self.registry.collect()
            if m.name == "http_requests"
            for s in m.samples
            if s.name == "http_requests_total"
        )
        self.assertEqual(total, 2)


if __name__ == "__main__":
    unittest.main()


class PerUserSumsTest(unittest.TestCase):
    """The per-user counters against a brute-force computation over a recorded log."""

    def test_counters_match_a_brute_force_computation_over_the_request_log(self) -> None:
        import random

        import sluice_openfeature

        registry = CollectorRegistry()
        metrics = FlagMetrics(registry, slow_threshold=0.5)
        rng = random.Random(18)
        # A request log: (user, variant, status, seconds), with a configuration change
        # (the stage moves on) after every 400 requests; heavy users via a skewed draw.
        log = []
        for i in range(2000):
            user = f"user-{int(rng.paretovariate(1.1)) % 300}"
            variant = "on" if int(user.split("-")[1]) % 4 == 0 else "off"
            code = 500 if rng.random() < (0.2 if user.endswith("7") else 0.02) else 200
            seconds = rng.choice([0.01, 0.2, 0.7])
            log.append((i, user, variant, code, seconds))
        for i, user, variant, code, seconds in log:
            if i % 400 == 0:
                metrics.on_configuration_changed(EventDetails(flags_changed=["new-checkout"]))
            served: dict = {}
            token = sluice_openfeature._served.set(served)
            try:
                metrics.record_evaluation("new-checkout", variant, "TARGETING_MATCH", user)
            finally:
                sluice_openfeature._served.reset(token)
            metrics.record_request(served, code, seconds)
        # Brute force: per segment between changes, each user's counts, then the sums.
        expected: dict = {}
        for start in range(0, len(log), 400):
            per_user: dict = {}
            for _, user, variant, code, seconds in log[start : start + 400]:
                c = per_user.setdefault((variant, user), [0, 0, 0])
                c[0] += 1
                c[1] += int(code >= 500)
                c[2] += int(seconds > 0.5)
            for (variant, _), (n, x, s) in per_user.items():
                e = expected.setdefault(variant, dict.fromkeys(metrics.user_sums, 0))
                for name, value in [
                    ("n", n), ("nn", n * n), ("x", x), ("xx", x * x), ("nx", n * x),
                    ("s", s), ("ss", s * s), ("ns", n * s),
                ]:  # fmt: skip
                    e[name] += value
        series = {
            "n": "requests", "nn": "requests_squared", "x": "errors", "xx": "errors_squared",
            "nx": "requests_errors", "s": "slow", "ss": "slow_squared", "ns": "requests_slow",
        }  # fmt: skip
        for variant, sums in expected.items():
            labels = {
                "feature_flag_key": "new-checkout",
                "feature_flag_result_variant": variant,
                "feature_flag_result_reason": "TARGETING_MATCH",
            }
            for name, value in sums.items():
                got = registry.get_sample_value(f"sluice_user_{series[name]}_total", labels)
                self.assertEqual(got, value, f"{variant} {name}")
        # Heavy users make Σn² far larger than Σn: the sums see the clustering.
        self.assertGreater(expected["off"]["nn"], 10 * expected["off"]["n"])

    def test_memory_per_user_is_small(self) -> None:
        import sluice_openfeature
        import tracemalloc

        metrics = FlagMetrics(CollectorRegistry())
        users = 100_000
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i in range(users):
            served: dict = {}
            token = sluice_openfeature._served.set(served)
            try:
                metrics.record_evaluation("new-checkout", "on", "TARGETING_MATCH", f"u{i}")
            finally:
                sluice_openfeature._served.reset(token)
            metrics.record_request(served, 200, 0.01)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        per_user = grown / users
        print(f"\nper-user state: {per_user:.0f} bytes per user, {grown / 1e6:.1f} MB per {users:,} users")
        self.assertLess(per_user, 1000)
