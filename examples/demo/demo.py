#!/usr/bin/env python3
"""Sluice's end-to-end demo: two flag rollouts side by side on one machine, no cluster.

    make demo                      # builds sluice, prepares .venv and Prometheus, runs this
    .venv/bin/python examples/demo/demo.py --sluice target/debug/sluice [--quick]

It starts, in a temporary directory:

* Prometheus, scraping the service every second (``--scrape-interval``); nothing else
  starts before its first scrape of the service;
* the example Python service (``examples/python-service/service.py``), which evaluates
  the flags ``new-checkout`` (route ``/checkout``) and ``new-search`` (``/search``) from
  a flagd file with the OpenFeature SDK, and whose ``new-search`` candidate path starts
  failing (a share of its requests answer 500) partway through the rollout;
* ``sluice standalone`` over copies of ``examples/demo/*.yaml`` (a live table on a
  terminal, plain lines otherwise);
* the load generator: Poisson arrivals from a heavy-tailed crowd of users (``user-1`` ..
  ``user-20000``, user ``k`` sending a share proportional to ``1/k^0.8``: ``user-1`` about
  3 % of the requests, ``user-2`` 2 %; ``--zipf`` sets the exponent).

Both rollouts' comparisons judge users, not requests: their ratio and histogram metrics
name the instrumentation's per-user sums (``perUser``), so a few heavy users who fail
more for reasons of their own do not make a healthy candidate look worse than its
baseline. ``--sticky-bad-user USER:PROB`` shows it: that user's requests fail with
probability ``PROB`` on every route and variant (an old client). ``user-2`` is the
heaviest user ``new-checkout``'s first stage (10 %) puts in its candidate cohort (flagd's
fractional bucketing of ``["new-checkout", "user-2"]``), so ``--sticky-bad-user
user-2:0.5`` raises that candidate's error rate to 16-34 % in the first stage against the
baseline's 0 with a healthy flag: the comparison finds no harm, and each look's
``userVariance`` in status shows the candidate's variance 20-65 times the binomial with
3.5-6 effective users (the summary prints it). ``--request-level`` drops the ``perUser``
queries to show what judging requests as independent does with the same traffic: the
comparison then finds harm. The error-rate metrics' ``max: 2%`` ceilings are still
judged request by request: with ``--sticky-bad-user`` the bad user alone takes a
candidate's share above 2 % and the ceilings roll both flags back (``new-search`` before
its fault begins). ``--no-ceilings`` drops them: the comparison alone decides, and
``new-checkout`` is promoted while ``new-search`` is rolled back by its own fault.

It waits until both rollouts are finished (``new-checkout`` promoted, ``new-search``
rolled back), asks the service which path users now get, and prints a summary: each
rollout's timeline and, for the broken one, the seconds from the first failing request
(the service records when it served it) to the flag file serving only the baseline
(Sluice's events log records every flag write). Every process it started is stopped on
the way out, also on Ctrl-C. ``--quick`` halves the stages and looks (the end-to-end
test runs that); ``--summary-json`` writes the figures for tests.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ROLLOUTS = ("new-checkout", "new-search")
BROKEN = "new-search"
ROUTES = {"new-checkout": "/checkout", "new-search": "/search"}
FINISHED = ("Promoted", "RolledBack")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def alive(process: subprocess.Popen, log: Path) -> bool:
    """True while the process runs; stops the demo with its log's tail when it died."""
    if process.poll() is None:
        return True
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise SystemExit(f"demo: {process.args[0]} exited with {process.returncode}:\n{tail}")


def wait(what: str, deadline: float, check, every: float = 0.2):
    """Polls ``check`` until it returns something truthy or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        try:
            value = check()
        except (OSError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > end:
            raise SystemExit(f"demo: gave up after {deadline:.0f}s waiting for {what}")
        time.sleep(every)


class Processes:
    """Every process the demo starts, stopped in reverse order (TERM, then KILL)."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(args, **kwargs)
        self.running.append((name, process))
        return process

    def stop(self, name: str) -> None:
        for entry in [e for e in self.running if e[0] == name]:
            self._stop(*entry)
            self.running.remove(entry)

    def stop_all(self) -> None:
        while self.running:
            self._stop(*self.running.pop())

    @staticmethod
    def _stop(name: str, process: subprocess.Popen) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def without_per_user(text: str) -> str:
    """The rollout without its metrics' ``perUser`` blocks (``--request-level``)."""
    lines, skipping = [], None
    for line in text.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip())
        if skipping is not None and line.strip() and indent > skipping:
            continue
        skipping = None
        if line.strip().startswith("perUser:"):
            skipping = indent
            continue
        lines.append(line)
    return "".join(lines)


def without_ceilings(text: str) -> str:
    """The rollout without its metrics' ``max`` ceilings (``--no-ceilings``)."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.strip().startswith("max:"))


def scaled_rollout(text: str, scale: float, interval: str | None) -> str:
    """The rollout with its stage durations scaled and its interval replaced."""

    def duration(match: re.Match) -> str:
        seconds = max(2, round(int(match.group(1)) * scale))
        return f"duration: {seconds}s"

    text = re.sub(r"duration: (\d+)s", duration, text)
    if interval:
        text = re.sub(r"interval: \S+", f"interval: {interval}", text)
    return text


def initial_flags() -> dict:
    """The flag document before any rollout: both flags exist and serve the baseline."""
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
    return {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {key: dict(flag) for key in ROLLOUTS},
    }


def read_status(state: Path, name: str) -> dict | None:
    try:
        return json.loads((state / f"{name}.status.json").read_text())
    except (OSError, ValueError):
        return None


def read_events(state: Path) -> list[dict]:
    try:
        lines = (state / "events.log").read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def unix(timestamp: str) -> float:
    """RFC 3339 (as Sluice writes it, UTC with up to nanoseconds) to unix seconds."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", timestamp)
    if not match:
        raise ValueError(f"not a UTC timestamp: {timestamp!r}")
    whole = float(calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")))
    return whole + float(match.group(2) or 0.0)


def scraped(prometheus_url: str) -> bool:
    """True once Prometheus has scraped the service successfully (``up`` is 1)."""
    query = urllib.parse.urlencode({"query": 'up{job="demo"}'})
    status, body = get(f"{prometheus_url}/api/v1/query?{query}")
    if status != 200:
        return False
    result = json.loads(body).get("data", {}).get("result", [])
    return any(r.get("value", [None, "0"])[1] == "1" for r in result)


def first_fault(service_url: str) -> float | None:
    """When the service served its first injected failure (its own metric)."""
    status, body = get(f"{service_url}/metrics")
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith("fault_first_injected_timestamp_seconds") and BROKEN in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def probe(service_url: str, flag: str, users: int = 200) -> dict:
    """Which path the service serves now to ``users`` fresh users."""
    counts = {"candidate": 0, "baseline": 0, "errors": 0}
    for i in range(users):
        status, body = get(f"{service_url}{ROUTES[flag]}?user=probe-{i}")
        try:
            counts[json.loads(body)["path"]] += 1
        except (ValueError, KeyError):
            counts["errors"] += 1
        if status >= 500:
            counts["errors"] += 1
    return counts


def timeline(status: dict, start: float) -> list[str]:
    lines = []
    for entry in status.get("history", []):
        at = unix(entry["at"]) - start
        stage = entry.get("stage")
        lines.append(
            f"  +{at:6.1f}s  {entry['from']:>18} -> {entry['to']:<12} "
            f"stage {'-' if stage is None else stage + 1}  weight {entry['weight']:>5}  "
            f"{entry['reason']}"
        )
    return lines


def look_summary(analysis: dict) -> dict:
    """One look, as the summary keeps it: its stage and verdict, and per metric the
    verdict and reason, the cohorts' counts and shares, the comparison's statistic and
    boundary, and the user-level variance."""
    return {
        "at": analysis.get("at"),
        "stage": analysis.get("stage"),
        "verdict": analysis.get("verdict"),
        "metrics": {
            m["name"]: {
                key: m.get(key)
                for key in ("verdict", "reason", "baseline", "candidate", "statistic",
                            "boundary", "userVariance")
            }
            for m in analysis.get("metrics", [])
        },
    }


def user_level_line(looks: list[dict]) -> str | None:
    """The look whose candidate's user-level variance is furthest above the binomial."""
    best = None
    for look in looks:
        for name, metric in look["metrics"].items():
            variance = metric.get("userVariance") or {}
            ratio = variance.get("candidateOverBinomial")
            if ratio is not None and (best is None or ratio > best[0]):
                best = (ratio, name, look, variance)
    if best is None:
        return None
    ratio, name, look, variance = best
    stage = "-" if look["stage"] is None else look["stage"] + 1
    return (f"  user-level variance ({name}, stage {stage}): the candidate's is {ratio:.1f}x "
            f"the binomial ({variance.get('candidateEffectiveUsers', 0):.1f} effective users), "
            f"the baseline's {variance.get('baselineOverBinomial', 0):.1f}x")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sluice", default=str(REPO / "target" / "debug" / "sluice"))
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    parser.add_argument("--service-dir", default=str(REPO / "examples" / "python-service"))
    parser.add_argument("--workdir", help="keep everything here (default: a temp dir, removed)")
    parser.add_argument("--quick", action="store_true", help="half-length stages, 2s looks")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--errors", type=float, default=0.3,
                        help="share of the broken candidate's requests that fail")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds added to each of the broken candidate's requests")
    parser.add_argument("--fault-after", type=float,
                        help="seconds after the service starts (default 25, quick 14)")
    parser.add_argument("--sticky-bad-user", action="append", default=[], metavar="USER:PROB",
                        help="USER's requests fail with probability PROB on every route and "
                        "variant (an old client, not a flag's fault; repeatable). user-2 is "
                        "the heaviest user new-checkout's 10%% stage puts in its candidate: "
                        "with user-2:0.5 the comparison, judged on user-level statistics, "
                        "finds no harm in that healthy flag (the max: 2%% ceiling, judged "
                        "request by request, still rolls it back: add --no-ceilings)")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="drop the rollouts' max ceilings: the comparison of the cohorts "
                        "alone decides (a max ceiling is judged request by request, so with "
                        "--sticky-bad-user it rolls the healthy flag back)")
    parser.add_argument("--request-level", action="store_true",
                        help="drop the rollouts' perUser queries: judge requests as if they "
                        "were independent (with --sticky-bad-user, the comparison then finds "
                        "harm in the healthy flag)")
    parser.add_argument("--zipf", type=float, default=0.8,
                        help="the crowd's Zipf exponent: user k sends a share proportional to "
                        "1/k^ZIPF (1 puts 10%% of the requests on user-1: too few effective "
                        "users in a 10%% candidate for user-level statistics to judge)")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=240.0,
                        help="give up when the rollouts are not finished after this long")
    parser.add_argument("--plain", action="store_true", help="no live table")
    parser.add_argument("--sluice-log", help="send sluice's output here instead of the terminal")
    parser.add_argument("--summary-json", help="write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Ctrl-C (also when started from a script, where SIGINT may arrive ignored), SIGTERM
    # and a closed terminal all end in the cleanup below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    processes = Processes()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sluice-demo-"))
    try:
        return run(args, processes, workdir)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        processes.stop_all()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        say("stopped every process it started")


def run(args: argparse.Namespace, processes: Processes, workdir: Path) -> int:
    sluice = Path(args.sluice)
    if not sluice.exists():
        raise SystemExit(f"demo: no sluice binary at {sluice} (cargo build, or pass --sluice)")
    if not shutil.which(args.prometheus) and not Path(args.prometheus).exists():
        raise SystemExit(
            "demo: Prometheus is not installed: run scripts/install-prometheus.sh "
            "(Debian/Ubuntu) or put `prometheus` 2.x on PATH (https://prometheus.io/download/)"
        )
    scale, interval = (0.5, "2s") if args.quick else (1.0, None)
    fault_after = args.fault_after if args.fault_after is not None else (14.0 if args.quick else 25.0)
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"demo: --workdir {workdir} is not empty (a new run needs a fresh one)")
    workdir.mkdir(parents=True, exist_ok=True)
    rollouts, state, logs = workdir / "rollouts", workdir / "state", workdir / "logs"
    for d in (rollouts, state, logs):
        d.mkdir(exist_ok=True)
    for name in ROLLOUTS:
        text = (HERE / f"{name}.yaml").read_text()
        if args.request_level:
            text = without_per_user(text)
        if args.no_ceilings:
            text = without_ceilings(text)
        (rollouts / f"{name}.yaml").write_text(scaled_rollout(text, scale, interval))
    flags = rollouts / "flags.json"
    flags.write_text(json.dumps(initial_flags(), indent=2) + "\n")
    say(f"working in {workdir}")

    # The service, on a port it picks.
    port_file = workdir / "service.port"
    python = sys.executable
    service_log = open(logs / "service.log", "w")
    service = processes.start(
        "service",
        [python, str(Path(args.service_dir) / "service.py"), "--flags", str(flags),
         "--port", "0", "--port-file", str(port_file), "--seed", "7",
         "--route", "/checkout=new-checkout", "--route", "/search=new-search",
         "--fault", f"{BROKEN}:errors={args.errors},latency={args.latency},after={fault_after}s"]
        + [arg for bad in args.sticky_bad_user for arg in ("--sticky-bad-user", bad)],
        stdout=service_log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    service_port = wait("the service's port", 30, lambda: alive(service, logs / "service.log")
                        and port_file.read_text().strip())
    service_url = f"http://127.0.0.1:{service_port}"
    wait("the service", 30, lambda: get(f"{service_url}/healthz")[0] == 200)
    say(f"service on {service_url} ({BROKEN}'s candidate fails {args.errors:.0%} of requests "
        f"and is {args.latency:g}s slower from {fault_after:.0f}s after start)")
    for bad in args.sticky_bad_user:
        user, _, prob = bad.rpartition(":")
        say(f"sticky bad user: {user}'s requests fail with probability {prob} on every "
            "route and variant (not a flag's fault)")
    if args.request_level:
        say("--request-level: the rollouts' perUser queries are dropped (requests are "
            "judged as independent)")
    if args.no_ceilings:
        say("--no-ceilings: the rollouts' max ceilings are dropped (the comparison alone "
            "decides)")

    # Prometheus, scraping the service.
    prometheus_port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {round(args.scrape_interval * 1000)}ms\n"
        f"  evaluation_interval: {round(args.scrape_interval * 1000)}ms\n"
        "scrape_configs:\n"
        "  - job_name: demo\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{service_port}']\n"
    )
    prometheus = processes.start(
        "prometheus",
        [args.prometheus, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
        stdout=open(logs / "prometheus.log", "w"), stderr=subprocess.STDOUT,
    )
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    wait("Prometheus", 60, lambda: alive(prometheus, logs / "prometheus.log")
         and get(f"{prometheus_url}/-/ready")[0] == 200)
    # Prometheus scrapes a new target only a few seconds after it is ready (its target
    # discovery sends updates every 5 s). A stage that began before the first scrape
    # would have its first seconds missing from every series, and the per-user sums of
    # squares and products would then not be sums over the stage's users (a counter's
    # first sample already holds what each user did before it): start nothing until
    # the service has been scraped.
    wait("Prometheus's first scrape of the service", 60,
         lambda: alive(prometheus, logs / "prometheus.log") and scraped(prometheus_url))
    say(f"Prometheus on {prometheus_url}, scraping every {args.scrape_interval:g}s")

    # Load, then Sluice.
    processes.start(
        "load",
        [python, str(Path(args.service_dir) / "loadgen.py"), "--url", service_url,
         "--rate", str(args.rate), "--duration", str(args.deadline), "--seed", "1",
         "--zipf", str(args.zipf),
         "--path", "/checkout=1", "--path", "/search=1"],
        stdout=open(logs / "load.log", "w"), stderr=subprocess.STDOUT,
    )
    plain = args.plain or args.sluice_log is not None or not sys.stdout.isatty()
    sluice_out = open(args.sluice_log, "w") if args.sluice_log else None
    say(f"load: {args.rate:g} requests/s, Poisson arrivals, heavy-tailed users (zipf {args.zipf:g})")
    say(f"sluice standalone: rollouts {', '.join(ROLLOUTS)}; `sluice ctl --state {state} "
        "status` shows them")
    start = time.time()
    processes.start(
        "sluice",
        [str(sluice), "standalone", "--rollouts", str(rollouts), "--state", str(state),
         "--default-prometheus", prometheus_url, "--poll", "500ms"]
        + (["--plain"] if plain else []),
        stdout=sluice_out, stderr=subprocess.STDOUT if sluice_out else None,
    )

    looks: dict[str, dict[str, dict]] = {name: {} for name in ROLLOUTS}

    def finished():
        statuses = {name: read_status(state, name) for name in ROLLOUTS}
        for name, status in statuses.items():
            analysis = (status or {}).get("lastAnalysis")
            if analysis and analysis.get("at"):
                looks[name].setdefault(analysis["at"], look_summary(analysis))
        if all(s and s.get("phase") in FINISHED for s in statuses.values()):
            return statuses
        return None

    statuses = wait("both rollouts to finish", args.deadline, finished, every=0.5)
    end = time.time()
    fault_at = first_fault(service_url)
    # Let the service pick the final flags up (its provider polls the file), then ask it.
    probes = {}
    for name in ROLLOUTS:
        want = "candidate" if statuses[name]["phase"] == "Promoted" else "baseline"
        try:
            probes[name] = wait(
                f"the service to serve {name}'s final state", 15,
                lambda n=name, w=want: (lambda c: c if c[w] == sum(
                    c[k] for k in ("candidate", "baseline")) else None)(probe(service_url, n)),
                every=0.5,
            )
        except SystemExit:
            probes[name] = probe(service_url, name)
    processes.stop("load")
    processes.stop("sluice")

    events = read_events(state)
    baseline_at = None
    if fault_at is not None:
        writes = [unix(e["at"]) for e in events
                  if e.get("rollout") == BROKEN and e.get("serves") == "baseline"
                  and unix(e["at"]) >= fault_at]
        baseline_at = min(writes) if writes else None
    seconds = None if baseline_at is None or fault_at is None else baseline_at - fault_at
    run_seconds = end - start

    print()
    print("=" * 78)
    print(f"Sluice demo summary (rollouts ran {run_seconds:.1f}s; times from sluice's start)")
    for name in ROLLOUTS:
        status = statuses[name]
        print(f"\n{name}: {status['phase']}")
        print("\n".join(timeline(status, start)))
        analysis = status.get("lastAnalysis") or {}
        for metric in analysis.get("metrics", []):
            if metric.get("verdict") == "Fail":
                b, c = metric.get("baseline") or {}, metric.get("candidate") or {}
                print(f"  failing metric {metric['name']}: baseline {b.get('value', 0):.2%} "
                      f"(n={b.get('n', 0):.0f}), candidate {c.get('value', 0):.2%} "
                      f"(n={c.get('n', 0):.0f}): {metric.get('reason', '')}")
        line = user_level_line(list(looks[name].values()))
        print(line or "  no user-level variance in its looks (no perUser queries)")
        print(f"  the service now serves {probes[name]['candidate']} of "
              f"{probes[name]['candidate'] + probes[name]['baseline']} fresh users the candidate")
    if seconds is not None:
        print(f"\n{BROKEN}: first failing request at +{fault_at - start:.1f}s; the flag file served "
              f"only the baseline at +{baseline_at - start:.1f}s: {seconds:.1f}s to roll back, "
              f"{seconds / run_seconds:.0%} of the {run_seconds:.0f}s run")
    else:
        print(f"\n{BROKEN}: no rollback after an injected failure was recorded")
    print("=" * 78)

    summary = {
        "run_seconds": run_seconds,
        "start_unix": start,
        "phases": {name: statuses[name]["phase"] for name in ROLLOUTS},
        "first_failure_unix": fault_at,
        "baseline_only_unix": baseline_at,
        "time_to_rollback_seconds": seconds,
        "share_of_run": None if seconds is None else seconds / run_seconds,
        "probes": probes,
        "looks": {name: list(looks[name].values()) for name in ROLLOUTS},
        "interval_seconds": 2.0 if args.quick else 5.0,
        "scrape_interval_seconds": args.scrape_interval,
        "fault_after_seconds": fault_after,
        "workdir": str(workdir),
    }
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    ok = statuses["new-checkout"]["phase"] == "Promoted" and statuses[BROKEN]["phase"] == "RolledBack"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
