"""``gateway usage restore``: put usage counted before a quota Redis data loss back, from the
access log.

Each access line of a request that reserved budget (it carries ``reserved_output``) says what
the request was settled to: its usage, or for a client that left early the bound it was
charged (``early_stop_output``). Those amounts are added to ``used`` of the windows that are
*current* now for the rules of the request's team, if the request was admitted inside that
window (its line's ``ts`` less ``duration_ms``). Only lines that ended before the cutoff are
replayed: by default the time of the quota state marker, which the gateway rewrites when it
finds the Redis empty, so requests settled into the new, empty counters are not counted twice.

Idempotent per request: request ids are ``<process prefix><sequence>`` (``pipeline.exchange``),
so each window keeps, per gateway process, the highest sequence restored
(``keys.restore_marks``, expiring with the counter) and a second run adds only requests newer
than that. This costs one small hash per window instead of a set of every request id. A line
older than what a first run restored for its process is therefore skipped by later runs: give
every log file (and the final cutoff) in the first run.

What cannot be restored is said in the report: lines without usage (upstream errors charge
nothing; a stream the upstream cut keeps its whole reservation, which the log does not give),
background responses and batches (settled later by the reconciler, not in the access log), the
prompt estimate of an early-stopped request in token windows, and reservations that were in
flight.

Cost rules (``cost_usd``) get the line's ``cost_usd``, what the gateway computed at the prices
then in force; per-user rules (``user_quotas``) the counters of the line's ``user``. A new
metric is one branch of ``charged_amount``, a new kind of rule set one owner in ``owners``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections.abc import Iterator

from gateway.config import GatewayConfig

# The replay (Redis, the quota planner) is imported when the command runs, so that building
# the CLI parser stays as cheap as before for every other command.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gateway usage restore``'s options. ``--config`` and ``--team`` keep what ``gateway
    usage`` was given when not repeated, so they work before or after ``restore``."""
    parser.add_argument(
        "--from",
        dest="sources",
        action="append",
        required=True,
        metavar="ACCESS_LOG",
        help="a file of the gateway's JSON log lines (repeatable; - for stdin); other lines "
        "are skipped",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be added, write nothing"
    )
    parser.add_argument(
        "--until",
        type=parse_time,
        help="replay only lines that ended before this (ISO 8601 or Unix seconds; default: "
        "when the gateway last found the quota Redis empty, from its state marker)",
    )
    parser.add_argument("--team", default=argparse.SUPPRESS, help="restore one team only")
    parser.add_argument("--config", default=argparse.SUPPRESS)


def parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def run(args: argparse.Namespace, config: GatewayConfig) -> int:
    """The command: exit 0 when done, 1 on an error, 2 when another restore ran meanwhile."""
    from gateway.storage.errors import StoreError
    from gateway.usage_restore.replay import format_report, restore

    team: str | None = getattr(args, "team", None)
    if config.store.redis_url is None:
        print(
            "error: no store.redis_url: the embedded store lived inside the gateway process; "
            "there is nothing to restore into",
            file=sys.stderr,
        )
        return 1
    if team is not None and team not in config.teams:
        print(f"error: team {team!r} is not in the config", file=sys.stderr)
        return 1
    try:
        report = asyncio.run(
            restore(
                config,
                _lines(args.sources),
                now=time.time(),
                until=args.until,
                team=team,
                dry_run=args.dry_run,
            )
        )
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StoreError:
        print("error: the quota store is unreachable", file=sys.stderr)
        return 1
    until_from = "--until" if args.until is not None else "the quota state marker, or now"
    print(format_report(report, dry_run=args.dry_run, until_from=until_from))
    return 2 if report.conflicts else 0


def _lines(sources: list[str]) -> Iterator[str]:
    for source in sources:
        if source == "-":
            yield from sys.stdin
            continue
        with open(source, encoding="utf-8", errors="replace") as handle:
            yield from handle
