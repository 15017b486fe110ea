#!/usr/bin/env python3
"""Evaluate a flagd flag document with the real OpenFeature Python SDK.

This is Sluice's test oracle: the consumer our users run (``openfeature-sdk`` with
``openfeature-provider-flagd`` in file mode, the in-process resolver reading the
document from disk) evaluates what Sluice wrote, for many targeting keys.

One job evaluates one flag of one document for ``keys`` targeting keys
``<key_prefix>0`` .. ``<key_prefix><keys-1>``. Jobs come either from the command
line (one job) or as a JSON array with ``--jobs FILE`` (``-`` reads stdin), so a
test can evaluate many documents with one interpreter launch. Job fields:

    name            label echoed in the output (default: "job-<index>")
    document        path of the flagd document (required)
    flag            flag key (required)
    type            boolean | string | integer | float | object (default boolean)
    keys            number of evaluations (default 1)
    key_prefix      targeting key prefix (default "user-")
    targeting_key   false: evaluate without a targeting key (default true)
    attributes      {name: [template, ...]}: evaluation i gets
                    templates[i % len(templates)] with "{key}" replaced by its
                    targeting key (or "anon-<i>" without one)

Output (stdout, one JSON object): {"results": [per job]} where a job's result is

    {"name", "flag", "evaluations",
     "counts":   {variant: {reason: count}},
     "values":   {variant: value served for it},
     "variants": [variant per evaluation, in key order],
     "reasons":  [reason per evaluation, in key order]}

Exit status: 0 on success; 1 if any evaluation reports an error, a variant maps to
two different values, or a provider does not become READY; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
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


class OracleError(Exception):
    """Anything that makes the oracle's answer untrustworthy."""


def evaluate(index: int, job: dict[str, typing.Any]) -> dict[str, typing.Any]:
    name = job.get("name", f"job-{index}")
    try:
        document = job["document"]
        flag = job["flag"]
    except KeyError as missing:
        raise OracleError(f"job {name}: missing field {missing}") from None
    flag_type = job.get("type", "boolean")
    if flag_type not in DEFAULTS:
        raise OracleError(f"job {name}: unknown type {flag_type!r}")
    keys = int(job.get("keys", 1))
    prefix = job.get("key_prefix", "user-")
    with_key = bool(job.get("targeting_key", True))
    attributes: dict[str, list[str]] = job.get("attributes", {})

    # One provider per job, under its own domain, reading the document in file
    # mode. set_provider_and_wait runs initialize() (which loads and parses the
    # file) synchronously and raises if it fails; then we insist on READY.
    domain = f"sluice-oracle-{index}"
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=document
    )
    api.set_provider_and_wait(provider, domain=domain)
    client = api.get_client(domain=domain)
    status = client.get_provider_status()
    if status != ProviderStatus.READY:
        raise OracleError(f"job {name}: provider for {document} is {status}, not READY")

    resolve = getattr(client, f"get_{flag_type}_details")
    default = DEFAULTS[flag_type]

    counts: dict[str, dict[str, int]] = {}
    values: dict[str, typing.Any] = {}
    variants: list[str | None] = []
    reasons: list[str | None] = []
    for i in range(keys):
        targeting_key = f"{prefix}{i}" if with_key else None
        filler = targeting_key if with_key else f"anon-{i}"
        attrs = {
            attr: templates[i % len(templates)].replace("{key}", filler)
            for attr, templates in attributes.items()
        }
        context = EvaluationContext(targeting_key=targeting_key, attributes=attrs)
        details = resolve(flag, default, context)
        if details.error_code is not None or details.reason == "ERROR":
            raise OracleError(
                f"job {name}: evaluating {flag!r} for {targeting_key!r} failed: "
                f"{details.error_code}: {details.error_message}"
            )
        variant = details.variant
        reason = str(details.reason) if details.reason is not None else None
        key = str(variant)
        if key in values and values[key] != details.value:
            raise OracleError(
                f"job {name}: variant {variant!r} served both "
                f"{values[key]!r} and {details.value!r}"
            )
        values[key] = details.value
        by_reason = counts.setdefault(key, {})
        by_reason[str(reason)] = by_reason.get(str(reason), 0) + 1
        variants.append(variant)
        reasons.append(reason)

    provider.shutdown()
    return {
        "name": name,
        "flag": flag,
        "evaluations": keys,
        "counts": counts,
        "values": values,
        "variants": variants,
        "reasons": reasons,
    }


def parse_args(argv: list[str]) -> list[dict[str, typing.Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", help="JSON array of jobs; '-' reads stdin")
    parser.add_argument("--document", help="flagd document (single job)")
    parser.add_argument("--flag", help="flag key (single job)")
    parser.add_argument("--type", default="boolean", choices=sorted(DEFAULTS))
    parser.add_argument("--keys", type=int, default=1, help="number of targeting keys")
    parser.add_argument("--key-prefix", default="user-")
    parser.add_argument(
        "--no-targeting-key", action="store_true", help="evaluate without a targeting key"
    )
    parser.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="context attribute; '{key}' is replaced by the targeting key (repeatable)",
    )
    args = parser.parse_args(argv)

    if args.jobs is not None:
        if args.document or args.flag:
            parser.error("--jobs excludes --document/--flag")
        source = sys.stdin if args.jobs == "-" else open(args.jobs, encoding="utf-8")
        with source:
            jobs = json.load(source)
        if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
            parser.error("--jobs must hold a JSON array of objects")
        return jobs

    if not args.document or not args.flag:
        parser.error("give --jobs, or --document and --flag")
    attributes: dict[str, list[str]] = {}
    for item in args.attribute:
        name, sep, template = item.partition("=")
        if not sep or not name:
            parser.error(f"--attribute wants NAME=TEMPLATE, got {item!r}")
        attributes.setdefault(name, []).append(template)
    return [
        {
            "document": args.document,
            "flag": args.flag,
            "type": args.type,
            "keys": args.keys,
            "key_prefix": args.key_prefix,
            "targeting_key": not args.no_targeting_key,
            "attributes": attributes,
        }
    ]


def main(argv: list[str]) -> int:
    jobs = parse_args(argv)
    try:
        results = [evaluate(index, job) for index, job in enumerate(jobs)]
    except OracleError as err:
        print(f"flagd_eval: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # provider initialisation failures and the like
        chain = []
        cause: BaseException | None = err
        while cause is not None:
            chain.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__
        print("flagd_eval: " + " <- ".join(chain), file=sys.stderr)
        return 1
    finally:
        api.shutdown()
    json.dump({"results": results}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
