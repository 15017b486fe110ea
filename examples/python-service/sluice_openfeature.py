"""Per-variant request metrics for services that evaluate feature flags with OpenFeature.

Copy this file into your service. It needs ``openfeature-sdk`` and ``prometheus_client``
and works with any OpenFeature provider (Sluice's demo uses flagd in file mode).

Sluice compares the users who are served a flag's candidate variant with those served
its baseline. For that, every request must be attributed to the variant it was served.
This module does it in two parts:

* an OpenFeature **hook** (:meth:`FlagMetrics.hook`) that sees every flag evaluation:
  the flag key, the variant served, the reason and the targeting key;
* a **WSGI or ASGI middleware** (:meth:`FlagMetrics.wsgi`, :meth:`FlagMetrics.asgi`)
  that times each request, reads its status code, and records it once for every flag
  the request evaluated, labelled with what that evaluation served.

Wiring (see the README next to this file for a complete service)::

    from openfeature import api
    from sluice_openfeature import FlagMetrics

    metrics = FlagMetrics()          # registers the metrics in prometheus_client's REGISTRY
    metrics.install()                # the hook and the configuration-change handler
    api.set_provider_and_wait(provider)
    metrics.wait_for_configuration() # the provider's first load has been handled
    app = metrics.wsgi(app)          # or: app = metrics.asgi(app)
    # ...serve prometheus_client.make_wsgi_app() (or make_asgi_app()) on /metrics

Metrics (label names follow OpenTelemetry's feature-flag attributes as Prometheus
spells them; ``code`` is the HTTP status code)::

    http_requests_total{feature_flag_key, feature_flag_result_variant,
                        feature_flag_result_reason, code}
    http_request_duration_seconds_bucket{feature_flag_key, feature_flag_result_variant,
                                         feature_flag_result_reason, le}
    feature_flag_users_total{feature_flag_key, feature_flag_result_variant,
                             feature_flag_result_reason}
    feature_flag_configuration_changed_timestamp_seconds{feature_flag_key}

Requests that evaluated no flag are recorded with empty flag labels (Prometheus shows
them without those labels), so the totals stay honest.

Cohorts. Only randomised evaluations belong to a cohort: flagd reports the reason
``TARGETING_MATCH`` for a ``fractional`` split (other providers may say ``SPLIT``).
Users outside a stage's audience, evaluations without a targeting key (``DEFAULT``) and a
flag without targeting (``STATIC``) are labelled with their own reason; Sluice's queries
keep only ``feature_flag_result_reason="TARGETING_MATCH"``.

Distinct users. ``feature_flag_users_total`` counts each targeting key once per flag,
variant and reason: the first time that key is served that variant. Sluice checks the
split of users (not requests: a few heavy users skew those) against the stage's weight
with ``sum by (feature_flag_result_variant) (increase(feature_flag_users_total[W]))``
where ``W`` is the time since the stage began. That is only right if every user active
in the stage is counted in the stage's window. A user first seen on the baseline in an
earlier stage who stays on the baseline would otherwise never be counted again, while
users moved to the candidate are counted anew: the candidate's share would look too
large. So the set of keys already seen for a flag is forgotten whenever the provider
reports that the flag's configuration changed (``PROVIDER_CONFIGURATION_CHANGED`` with
the flag in ``flags_changed``), which is what happens when Sluice writes a new stage.
The increase over a stage's window then counts each user active in it once per variant.

Per-user sums. For a variance that counts users, not requests (Sluice's ``perUser``
queries), each user's request count ``n``, error count ``x`` (status 5xx) and slow count
``s`` (latency above ``slow_threshold``) since the flag's configuration last changed are
kept beside its seen-set entry, and plain counters per flag, variant and reason add up,
over users, ``Σn`` (``sluice_user_requests_total``), ``Σn²``
(``sluice_user_requests_squared_total``), ``Σx``, ``Σx²``, ``Σn·x``
(``sluice_user_errors_total``, ``sluice_user_errors_squared_total``,
``sluice_user_requests_errors_total``) and the same for slow requests
(``sluice_user_slow_total``, ``sluice_user_slow_squared_total``,
``sluice_user_requests_slow_total``). Each is updated one request at a time:
``(n + 1)² − n² = 2n + 1``, and ``(n + 1)(x + e) − n·x = x + e(n + 1)`` for a request
with ``e`` errors (0 or 1). The increase of a counter over a stage's window is then the
sum over the stage's users of their counts' squares (and products) since the stage began.
Memory: one entry per active user and variant (its key and three counts), measured at
184 bytes per user on CPython 3.11 with tracemalloc (the test
``test_memory_per_user_is_small`` prints the figure): 18.4 MB per 100,000 users.

Limits, stated plainly:

* The seen-sets live in this process's memory: one entry per distinct targeting key and
  variant since the flag last changed. Several replicas each count their own users, so a
  user served by two replicas counts twice (in whichever cohort the flag puts them, so
  the split stays unbiased but the check sees more users than there are).
* The provider swaps the configuration and then runs event handlers on a thread pool,
  so evaluations in the few milliseconds between the two are counted against the old
  seen-set. The provider itself notices a changed file some time after it was written
  (flagd's file mode polls; see the README): evaluations in that gap are served, and
  counted, under the previous stage's configuration.
* A restart forgets the seen-sets: users active before and after it count twice in a
  window that spans it, in both cohorts alike.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import typing

from openfeature import api
from openfeature.event import EventDetails, ProviderEvent
from openfeature.flag_evaluation import FlagEvaluationDetails
from openfeature.hook import Hook, HookContext, HookHints
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["COHORT_REASONS", "FLAG_LABELS", "FlagMetrics", "FlagMetricsHook"]

logger = logging.getLogger("sluice_openfeature")

#: The label names every per-variant metric carries, in order.
FLAG_LABELS = (
    "feature_flag_key",
    "feature_flag_result_variant",
    "feature_flag_result_reason",
)

#: Evaluation reasons that mean "randomised": only these evaluations belong to a cohort.
COHORT_REASONS = frozenset({"TARGETING_MATCH", "SPLIT"})

#: Latency buckets (seconds): fine around typical web latencies, up to 10 s.
DEFAULT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
)  # fmt: skip

# What the current request was served: flag key -> (variant, reason). Set by the
# middleware for the duration of a request, filled by the hook.
_served: contextvars.ContextVar[dict[str, tuple[str, str, str]] | None] = contextvars.ContextVar(
    "sluice_openfeature_served", default=None
)

_NO_FLAG = ("", "", "")


class FlagMetrics:
    """The metrics, the seen-sets of targeting keys, and the parts that feed them.

    One instance per process. ``registry`` is where the metrics are registered
    (prometheus_client's global ``REGISTRY`` by default); ``buckets`` are the latency
    histogram's upper bounds in seconds; ``skip_paths`` are request paths the
    middlewares do not record (the metrics endpoint itself, health checks).
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        buckets: typing.Sequence[float] = DEFAULT_BUCKETS,
        skip_paths: typing.Iterable[str] = ("/metrics", "/healthz"),
        slow_threshold: float = 0.5,
    ) -> None:
        self.requests = Counter(
            "http_requests",
            "HTTP requests by the feature-flag variant served and status code.",
            [*FLAG_LABELS, "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by the feature-flag variant served.",
            FLAG_LABELS,
            buckets=buckets,
            registry=registry,
        )
        self.users = Counter(
            "feature_flag_users",
            "Distinct targeting keys, counted the first time each is served a variant "
            "since the flag's configuration last changed.",
            FLAG_LABELS,
            registry=registry,
        )
        self.configuration_changed = Gauge(
            "feature_flag_configuration_changed_timestamp_seconds",
            "When this process last saw the flag's configuration change (unix time).",
            ["feature_flag_key"],
            registry=registry,
        )
        def user_counter(name: str, what: str) -> Counter:
            return Counter(
                f"sluice_user_{name}",
                f"The sum over users of {what}, each user counted since the flag's "
                "configuration last changed.",
                FLAG_LABELS,
                registry=registry,
            )

        self.user_sums = {
            "n": user_counter("requests", "their requests n"),
            "nn": user_counter("requests_squared", "n²"),
            "x": user_counter("errors", "their errors x (5xx)"),
            "xx": user_counter("errors_squared", "x²"),
            "nx": user_counter("requests_errors", "n·x"),
            "s": user_counter("slow", "their slow requests s (above the slow threshold)"),
            "ss": user_counter("slow_squared", "s²"),
            "ns": user_counter("requests_slow", "n·s"),
        }
        self.slow_threshold = slow_threshold
        self.skip_paths = frozenset(skip_paths)
        self._configured = threading.Event()
        self._lock = threading.Lock()
        # flag key -> (variant, reason) -> targeting key -> [n, x, s] since the last change
        self._seen: dict[str, dict[tuple[str, str], dict[str, list[int]]]] = {}

    def install(self) -> None:
        """Registers the hook globally and the configuration-change handler.

        Call once at start-up, before the provider is set, so that the handler sees the
        provider's first load too.
        """
        api.add_hooks([self.hook()])
        api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self.on_configuration_changed)

    def wait_for_configuration(self, timeout: float = 10.0) -> bool:
        """Waits until the configuration-change handler has run once; False on timeout.

        Providers announce their first load with a configuration-changed event, and the
        SDK runs handlers on a thread pool: an evaluation made before that handler ran
        would have its user forgotten and counted twice. Call this after
        ``set_provider_and_wait`` and before serving.
        """
        return self._configured.wait(timeout)

    def hook(self) -> FlagMetricsHook:
        """The OpenFeature hook that records each evaluation (register it yourself, on
        the API or on one client, if you don't call :meth:`install`)."""
        return FlagMetricsHook(self)

    def on_configuration_changed(self, details: EventDetails) -> None:
        """Forgets the seen-sets of the flags whose configuration changed.

        An OpenFeature ``PROVIDER_CONFIGURATION_CHANGED`` handler. ``flags_changed`` of
        ``None`` means "unknown": every flag is forgotten.
        """
        now = time.time()
        with self._lock:
            changed = list(self._seen) if details.flags_changed is None else details.flags_changed
            for flag in changed:
                self._seen.pop(flag, None)
        for flag in changed:
            self.configuration_changed.labels(flag).set(now)
        self._configured.set()
        if changed:
            logger.info(
                "flag configuration changed: %s; counting their users afresh",
                ", ".join(sorted(changed)),
            )

    def record_evaluation(
        self, flag: str, variant: str, reason: str, targeting_key: str | None
    ) -> None:
        """Attributes the current request (if any) to this evaluation and counts the
        targeting key if it is new for this variant. Called by the hook."""
        served = _served.get()
        if served is not None:
            # The first evaluation of a flag in a request decides its attribution.
            served.setdefault(flag, (variant, reason, targeting_key or ""))
        if not targeting_key:
            return
        with self._lock:
            keys = self._seen.setdefault(flag, {}).setdefault((variant, reason), {})
            if targeting_key in keys:
                return
            keys[targeting_key] = [0, 0, 0]
        self.users.labels(flag, variant, reason).inc()

    def record_request(
        self, served: dict[str, tuple[str, str, str]], code: int, seconds: float
    ) -> None:
        """Records one finished request for every flag it evaluated (or once with empty
        flag labels if it evaluated none), and adds it to its user's counts and the
        per-user sums. Called by the middlewares."""
        attributions = [(f, v, r) for f, (v, r, _) in served.items()] or [_NO_FLAG]
        for labels in attributions:
            self.requests.labels(*labels, str(code)).inc()
            self.duration.labels(*labels).observe(seconds)
        error, slow = int(code >= 500), int(seconds > self.slow_threshold)
        for flag, (variant, reason, key) in served.items():
            if not key:
                continue
            with self._lock:
                keys = self._seen.setdefault(flag, {}).setdefault((variant, reason), {})
                counts = keys.setdefault(key, [0, 0, 0])
                n, x, s = counts
                counts[0], counts[1], counts[2] = n + 1, x + error, s + slow
            sums = {k: c.labels(flag, variant, reason) for k, c in self.user_sums.items()}
            sums["n"].inc()
            sums["nn"].inc(2 * n + 1)
            sums["x"].inc(error)
            sums["xx"].inc(error * (2 * x + 1))
            sums["nx"].inc(x + error * (n + 1))
            sums["s"].inc(slow)
            sums["ss"].inc(slow * (2 * s + 1))
            sums["ns"].inc(s + slow * (n + 1))

    def wsgi(self, app: typing.Callable) -> typing.Callable:
        """Wraps a WSGI application so each request is recorded by variant.

        The request is timed until the server closes its response body.
        """
        return _WsgiMiddleware(app, self)

    def asgi(self, app: typing.Callable) -> typing.Callable:
        """Wraps an ASGI application (HTTP requests; other scopes pass through).

        Evaluations must happen in the request's task or in code that copies its
        context (``asyncio.to_thread``, Starlette's thread pool do).
        """
        return _AsgiMiddleware(app, self)


class FlagMetricsHook(Hook):
    """Records every evaluation, errors included, after it finished."""

    def __init__(self, metrics: FlagMetrics) -> None:
        self.metrics = metrics

    def finally_after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[typing.Any],
        hints: HookHints,
    ) -> None:
        reason = details.reason
        self.metrics.record_evaluation(
            hook_context.flag_key,
            "" if details.variant is None else str(details.variant),
            "UNKNOWN" if reason is None else str(reason),
            hook_context.evaluation_context.targeting_key,
        )


class _WsgiMiddleware:
    def __init__(self, app: typing.Callable, metrics: FlagMetrics) -> None:
        self.app = app
        self.metrics = metrics

    def __call__(self, environ: dict, start_response: typing.Callable) -> typing.Iterable:
        if environ.get("PATH_INFO", "") in self.metrics.skip_paths:
            return self.app(environ, start_response)
        started = time.perf_counter()
        served: dict[str, tuple[str, str, str]] = {}
        token = _served.set(served)
        status = [500]

        def recording_start_response(
            status_line: str, headers: list, exc_info: typing.Any = None
        ) -> typing.Callable:
            status[0] = int(status_line.split(" ", 1)[0])
            return start_response(status_line, headers, exc_info)

        def finish() -> None:
            try:
                _served.reset(token)
            except ValueError:  # closed from another context: nothing to restore
                pass
            self.metrics.record_request(served, status[0], time.perf_counter() - started)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            status[0] = 500
            finish()
            raise
        return _ClosingBody(body, finish)


class _ClosingBody:
    """A WSGI response body that calls ``on_close`` once, after the app's ``close``."""

    def __init__(self, body: typing.Iterable, on_close: typing.Callable[[], None]) -> None:
        self.body = body
        self.on_close = on_close

    def __iter__(self) -> typing.Iterator:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()


class _AsgiMiddleware:
    def __init__(self, app: typing.Callable, metrics: FlagMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: typing.Callable, send: typing.Callable) -> None:
        if scope.get("type") != "http" or scope.get("path") in self.metrics.skip_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        served: dict[str, tuple[str, str, str]] = {}
        token = _served.set(served)
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except BaseException:
            status = 500
            raise
        finally:
            _served.reset(token)
            self.metrics.record_request(served, status, time.perf_counter() - started)
