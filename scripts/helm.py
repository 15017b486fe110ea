#!/usr/bin/env python3
"""Helm without the helm binary: Helm's own Go library, loaded from Python.

    helm.py lint CHART [--values JSON]...   `helm lint CHART` (helm-sdkpy), then a strict
                                             lint (helm-python-sdk) with the default values,
                                             each CHART/ci/*-values.yaml and each --values
    helm.py render CHART [--values JSON] [--name NAME] [--namespace NS]
                                             `helm template`: the rendered manifests as one
                                             YAML stream on stdout (helm-python-sdk)

Exit status: 0 when clean, 1 when lint finds an error (or a warning in the strict pass)
or a template fails to render, 2 on bad usage. The packages are in
tests/python/helm-requirements.txt; `make helm` installs them into .venv.

Why two packages: helm-sdkpy (Helm's action package) lints, but it cannot render
without a cluster and its lint report serialises each message's error as `{}`, so its
findings carry a severity and a path but no text. helm-python-sdk renders offline and
lints with values, with the messages' text.
"""

import argparse
import asyncio
import glob
import json
import os
import sys

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def lint_sdkpy(chart: str) -> bool:
    """`helm lint CHART` through helm-sdkpy; True when no message is an error."""
    import helm_sdkpy

    report = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart))
    ok = True
    print(f"==> helm lint {chart} (helm-sdkpy {helm_sdkpy.__version__}, {helm_sdkpy.get_version()})")
    for message in report.get("Messages") or []:
        severity = SEVERITY.get(message.get("Severity"), "UNKNOWN")
        # helm-sdkpy drops the text of each finding (a Go error marshals as {}).
        text = message.get("Err") or ""
        print(f"[{severity}] {message.get('Path')}: {text or '(helm-sdkpy gives no text)'}")
        if message.get("Severity", 0) >= 3:
            ok = False
    if report.get("Errors"):
        ok = False
    linted = report.get("TotalChartsLinted", 0)
    print(f"{linted} chart(s) linted, {'0' if ok else 'some'} chart(s) failed")
    return ok and linted == 1


def lint_strict(chart: str, values: dict, label: str) -> bool:
    """A strict lint (warnings fail) with one values set; True when clean."""
    import helm_python

    report = helm_python.lint(chart, values or None, strict=True, namespace="sluice-system")
    print(f"==> helm lint --strict {chart} with {label} (helm-python-sdk)")
    ok = True
    printed = set()
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        printed.add(message.get("error"))
        print(f"[{SEVERITY.get(severity, 'UNKNOWN')}] {message.get('path')}: {message.get('error')}")
        if severity >= 2:
            ok = False
    for error in report.get("errors") or []:
        if error not in printed:
            print(f"[ERROR] {error}")
        ok = False
    return ok


def render(chart: str, values: dict, name: str, namespace: str) -> str:
    """The chart's templates rendered offline, as one YAML stream."""
    import helm_python

    manifests = helm_python.Chart.load(chart).render(
        values or None, name=name, namespace=namespace, is_install=True
    )
    out = []
    for path in sorted(manifests):
        text = manifests[path]
        if not path.endswith((".yaml", ".yml")) or not text.strip():
            continue
        out.append(f"---\n# Source: {path}\n{text.strip()}\n")
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lint = sub.add_parser("lint", help="helm lint, then a strict lint per values set")
    lint.add_argument("chart")
    lint.add_argument("--values", action="append", default=[], help="a values set as JSON")
    tpl = sub.add_parser("render", help="helm template")
    tpl.add_argument("chart")
    tpl.add_argument("--values", default="{}", help="values as JSON")
    tpl.add_argument("--name", default="sluice")
    tpl.add_argument("--namespace", default="sluice-system")
    args = parser.parse_args()

    if args.command == "lint":
        import helm_python

        ok = lint_sdkpy(args.chart)
        cases = [({}, "default values")]
        for path in sorted(glob.glob(os.path.join(args.chart, "ci", "*-values.yaml"))):
            with open(path, encoding="utf-8") as file:
                cases.append((helm_python.values_from_yaml(file.read()), path))
        cases += [(json.loads(v), v) for v in args.values]
        for values, label in cases:
            ok = lint_strict(args.chart, values, label) and ok
        print("lint: ok" if ok else "lint: FAILED")
        return 0 if ok else 1
    try:
        sys.stdout.write(render(args.chart, json.loads(args.values), args.name, args.namespace))
    except Exception as error:  # the library's render and values errors
        print(f"render failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
