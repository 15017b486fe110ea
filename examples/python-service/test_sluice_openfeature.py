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
