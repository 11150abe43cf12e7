"""The replay behind ``gateway usage restore`` (see the package docstring): reading access
lines, working out what each current window gets, and writing it once per request."""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from gateway import json_codec
from gateway.apis import Usage
from gateway.config import GatewayConfig, ModelProfile, QuotaRule
from gateway.config_pricing import NANO_PER_USD
from gateway.config_quota import COST_METRIC
from gateway.log import ACCESS_LOGGER
from gateway.quota.policy import COUNTER_RETENTION_SECONDS, rule_applies, used_amount
from gateway.quota.store import keys
from gateway.quota.store.guards import marker_keys
from gateway.quota.windows import Window, window_at
from gateway.storage.client import RedisClient, connect
from gateway.storage.errors import guarded

#: ``gw-<12 hex, per process><12 hex sequence>``; anything else is its own "process".
_REQUEST_ID = re.compile(r"^(?P<process>.+?)(?P<sequence>[0-9a-f]{12})$")

SKIP_REASONS = {
    "other": "other log lines",
    "uncharged": "requests that reserved nothing (cache hits, refusals, teams without rules)",
    "no_usage": "charged requests whose settled amounts the log does not give (upstream "
    "errors, streams the upstream cut, background responses and batches)",
    "after_cutoff": "ended after the cutoff (already in the current counters)",
    "past_window": "outside every window that is current now",
    "unknown_team": "teams no longer in the config",
    "duplicate": "duplicate lines",
}


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """What an access line says a request was charged."""

    request_id: str
    team: str
    user: str | None  # auth.user_claim, for user_quotas
    model: str | None
    started: float  # about when it was admitted: its reservation's window is this one's
    ended: float
    usage: Usage | None
    early_stop_output: int | None
    cost: int | None  # nano-dollars: what its prices made of its usage or early-stop charge


def parse_line(text: str) -> LoggedRequest | str:
    """The request an access line describes, or why the line is skipped (a ``SKIP_REASONS`` key)."""
    try:
        entry = json_codec.loads(text)
    except ValueError:
        return "other"
    if not isinstance(entry, dict) or entry.get("logger") != ACCESS_LOGGER:
        return "other"
    request_id, team, ts = entry.get("request_id"), entry.get("team"), entry.get("ts")
    if not (isinstance(request_id, str) and isinstance(team, str) and isinstance(ts, str)):
        return "other"
    if not isinstance(entry.get("reserved_output"), int):
        return "uncharged"
    try:
        ended = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "other"
    duration = entry.get("duration_ms")
    started = ended - (duration / 1000 if isinstance(duration, int | float) else 0.0)
    usage = _usage(entry)
    stop = entry.get("early_stop_output")
    early_stop_output = stop if isinstance(stop, int) else None
    if usage is None and early_stop_output is None:
        return "no_usage"
    model, user, cost = entry.get("model"), entry.get("user"), entry.get("cost_usd")
    return LoggedRequest(
        request_id=request_id,
        team=team,
        user=user if isinstance(user, str) else None,
        model=model if isinstance(model, str) else None,
        started=started,
        ended=ended,
        usage=usage,
        early_stop_output=early_stop_output,
        # Logged in dollars: nano-dollars below 2**53 survive the float exactly.
        cost=round(cost * NANO_PER_USD) if isinstance(cost, int | float) else None,
    )


def _usage(entry: dict[str, Any]) -> Usage | None:
    counts: list[int] = []
    for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_prompt_tokens"):
        count = entry.get(name)
        if not isinstance(count, int):
            return None  # no usage: the request ended without the upstream's count
        counts.append(count)
    prompt, completion, reasoning, cached = counts
    return Usage(prompt, completion, reasoning, cached)


def charged_amount(metric: str, request: LoggedRequest, profile: ModelProfile) -> int:
    """What the settlement of ``request`` charged a window of ``metric``: its usage, or for a
    client that left early the same bound ``quota.early_stop`` charged, less the prompt
    estimate (not in the log; a cost includes it). A new metric is one more branch here."""
    if metric == COST_METRIC:
        return request.cost or 0  # what the gateway computed then, at the prices of then
    if request.usage is not None:
        return used_amount(metric, request.usage)
    output = request.early_stop_output or 0
    if metric == "requests":
        return 1
    if metric in ("completion_tokens", "total_tokens"):
        return output
    if metric == "reasoning_tokens":
        return output if profile.reasoning else 0
    return 0


@dataclass(frozen=True, slots=True)
class Owner:
    """A set of rules a request was charged to, and where their counters live. Every key of
    an owner carries its team's hash tag, so each script call touches one Cluster slot."""

    name: str  # how the report names it
    team: str
    rules: tuple[QuotaRule, ...]
    counter: Callable[[str], str]  # window key -> counter key
    marks: Callable[[str], str]  # window key -> restore marks key


def owners(config: GatewayConfig, request: LoggedRequest) -> list[Owner]:
    """The owners whose counters ``request`` was charged to: its team's rules, and its user's
    (``user_quotas``, keyed inside the team's hash tag as ``quota.policy`` keys them)."""
    prefix, team, user = config.store.key_prefix, request.team, request.user
    found = [
        Owner(
            name=team,
            team=team,
            rules=tuple(config.quota_rules(team)),
            counter=functools.partial(keys.quota_counter, prefix, team),
            marks=functools.partial(keys.restore_marks, prefix, team),
        )
    ]
    user_rules = config.user_quota_rules(team)
    if user is not None and user_rules:

        def in_user(build: Callable[[str, str, str], str]) -> Callable[[str], str]:
            return lambda key: build(prefix, team, keys.user_window_key(user, key))

        found.append(
            Owner(
                name=f"{team} user {user}",
                team=team,
                rules=tuple(user_rules),
                counter=in_user(keys.quota_counter),
                marks=in_user(keys.restore_marks),
            )
        )
    return found


@dataclass(slots=True)
class ProcessLines:
    """One gateway process's lines for one window."""

    restored_up_to: int  # the highest sequence earlier runs restored (-1: none)
    top: int = -1
    amount: int = 0
    lines: int = 0
    already: int = 0  # lines earlier runs restored


@dataclass(slots=True)
class WindowRestore:
    owner: Owner
    rule: QuotaRule
    window: Window
    counter: str
    marks: str
    expires_at: float
    processes: dict[str, ProcessLines] = field(default_factory=dict)

    @property
    def amount(self) -> int:
        return sum(p.amount for p in self.processes.values())

    @property
    def lines(self) -> int:
        return sum(p.lines for p in self.processes.values())

    @property
    def already(self) -> int:
        return sum(p.already for p in self.processes.values())


@dataclass(slots=True)
class RestoreReport:
    until: float
    windows: dict[str, WindowRestore] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    requests: int = 0  # lines replayed into at least one window
    conflicts: int = 0  # windows another restore changed while this one ran


def split_request_id(request_id: str) -> tuple[str, int]:
    match = _REQUEST_ID.match(request_id)
    if match is None:
        return request_id, 0
    return match.group("process"), int(match.group("sequence"), 16)


class UsageRestorer:
    def __init__(self, client: RedisClient, config: GatewayConfig, *, now: float) -> None:
        self._client = client
        self._config = config
        self._now = now
        self._timeout = config.store.timeout_seconds
        self._hold = config.upstream.total_timeout_seconds + config.store.reservation_grace_seconds
        lua = resources.files("gateway.quota.store") / "lua" / "restore_usage.lua"
        self._script = client.register_script(lua.read_text(encoding="utf-8"))

    async def cutoff(self) -> float:
        """When the current quota state began: the marker's time (whole seconds, so the next
        second, erring towards counting twice rather than not at all), or now without one."""
        async with guarded("usage restore", self._timeout):
            found = [
                await self._client.get(key)
                for key in await marker_keys(self._client, self._config.store.key_prefix)
            ]
        # On a cluster, the latest marker: the most recent loss of any primary.
        times = [int(value) for value in found if value is not None and value.isdigit()]
        return float(max(times)) + 1.0 if times else self._now

    async def plan(
        self, lines: Iterable[str], *, until: float, team: str | None = None
    ) -> RestoreReport:
        """Read ``lines`` and work out what each current window gets (reads Redis, writes
        nothing)."""
        report = RestoreReport(until=until)
        seen: set[str] = set()
        for text in lines:
            request = parse_line(text)
            if isinstance(request, str):
                report.skipped[request] += 1
                continue
            if team is not None and request.team != team:
                continue
            if request.team not in self._config.teams:
                report.skipped["unknown_team"] += 1
                continue
            if request.ended >= until:
                report.skipped["after_cutoff"] += 1
                continue
            if request.request_id in seen:
                report.skipped["duplicate"] += 1
                continue
            seen.add(request.request_id)
            if await self._add(report, request):
                report.requests += 1
            else:
                report.skipped["past_window"] += 1
        return report

    async def _add(self, report: RestoreReport, request: LoggedRequest) -> bool:
        """Count ``request`` into every current window it was charged to; False if none."""
        profile = self._config.model_profile(request.model)
        process, sequence = split_request_id(request.request_id)
        charged: set[str] = set()  # two identical rules share one counter, charged once
        for owner in owners(self._config, request):
            for rule in owner.rules:
                if not rule_applies(rule, request.model):
                    continue
                window = window_at(rule.window, self._now)
                if not window.start <= request.started < window.end:
                    continue
                key = keys.window_key(rule.metric, rule.window, rule.models, window.label)
                counter = owner.counter(key)
                if counter in charged:
                    continue
                charged.add(counter)
                target = report.windows.get(counter)
                if target is None:
                    expires_at = window.end + self._hold + COUNTER_RETENTION_SECONDS
                    target = WindowRestore(
                        owner, rule, window, counter, owner.marks(key), expires_at
                    )
                    report.windows[counter] = target
                lines = target.processes.get(process)
                if lines is None:
                    restored_up_to = await self._restored_up_to(target.marks, process)
                    lines = target.processes[process] = ProcessLines(restored_up_to)
                if sequence <= lines.restored_up_to:
                    lines.already += 1
                    continue
                lines.lines += 1
                lines.amount += charged_amount(rule.metric, request, profile)
                lines.top = max(lines.top, sequence)
        return bool(charged)

    async def _restored_up_to(self, marks: str, process: str) -> int:
        async with guarded("usage restore", self._timeout):
            found = await self._client.hget(marks, process)
        return -1 if found is None else int(found)

    async def apply(self, report: RestoreReport) -> None:
        """Write what ``plan`` found: per window and process, one script call."""
        for target in report.windows.values():
            for process, lines in target.processes.items():
                if lines.top <= lines.restored_up_to:
                    continue
                args: list[str | int] = [
                    process,
                    lines.restored_up_to,
                    lines.top,
                    lines.amount,
                    int(target.expires_at * 1000),
                ]
                async with guarded("usage restore", self._timeout):
                    applied = await self._script(keys=[target.counter, target.marks], args=args)
                if not int(applied):
                    report.conflicts += 1


# --- one run --------------------------------------------------------------------------------------


async def restore(
    config: GatewayConfig,
    lines: Iterable[str],
    *,
    now: float,
    until: float | None,
    team: str | None = None,
    dry_run: bool = False,
) -> RestoreReport:
    """Replay ``lines`` into the quota Redis of ``config`` (``until`` None: the marker's time)."""
    assert config.store.redis_url is not None
    client = await connect(
        config.store.redis_url.get_secret_value(), timeout_seconds=config.store.timeout_seconds
    )
    try:
        restorer = UsageRestorer(client, config, now=now)
        cutoff = until if until is not None else await restorer.cutoff()
        report = await restorer.plan(lines, until=cutoff, team=team)
        if not dry_run:
            await restorer.apply(report)
        return report
    finally:
        await client.aclose()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_report(report: RestoreReport, *, dry_run: bool, until_from: str) -> str:
    out = [f"replaying requests that ended before {_iso(report.until)} ({until_from})"]
    header = (
        "TEAM",
        "METRIC",
        "WINDOW",
        "MODELS",
        "WINDOW START",
        "REQUESTS",
        "WOULD ADD" if dry_run else "ADDED",
        "EARLIER",
    )
    rows = [header]
    for target in sorted(
        report.windows.values(), key=lambda t: (t.owner.name, t.rule.metric, t.rule.window)
    ):
        rows.append(
            (
                target.owner.name,
                target.rule.metric,
                target.rule.window,
                ",".join(target.rule.models or ["*"]),
                _iso(target.window.start),
                str(target.lines),
                str(target.rule.readable(target.amount)),  # USD for cost rules
                str(target.already),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    note = " (dry run: nothing written)" if dry_run else ""
    out.append(f"{report.requests} requests replayed{note}")
    for reason, count in sorted(report.skipped.items()):
        out.append(f"skipped {count}: {SKIP_REASONS[reason]}")
    if report.conflicts:
        out.append(
            f"warning: {report.conflicts} windows were changed by another restore meanwhile "
            "and left alone; run again"
        )
    return "\n".join(out)
