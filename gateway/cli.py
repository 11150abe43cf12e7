"""Command line: ``gateway serve | token | check-config | config-schema | mock-upstream``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence

from gateway import __version__, usage_restore
from gateway.auth import mint_configured_token
from gateway.config import GatewayConfig, config_json_schema
from gateway.config_loader import ConfigError, UnsetVariable, load_config
from gateway.log import configure_logging

DEFAULT_CONFIG = "config/gateway.yaml"
log = logging.getLogger("gateway")

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration like 30s, 15m, 1h or 7d: {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _config_path(value: str | None) -> str:
    return value or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG


def _load_or_exit(path: str) -> GatewayConfig:
    """The config of a command that needs only some of it: a variable nothing here uses (say
    OPENAI_API_KEY for ``gateway token``) may be unset; one a field needs is an error."""
    try:
        return load_config(path, unset=[])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    """Unset environment variables are warnings (the file is fine; the deployment sets them)
    unless --require-env; any other problem is an error."""
    unset: list[UnsetVariable] = []
    config: GatewayConfig | None = None
    try:
        config = load_config(args.path, unset=unset)
    except ConfigError as exc:
        if not exc.only_unset:
            print(f"error: {exc}", file=sys.stderr)
            for variable in unset:
                print(f"warning: {variable}", file=sys.stderr)
            return 1
    for variable in unset:
        print(f"{'error' if args.require_env else 'warning'}: {variable}", file=sys.stderr)
    if unset and args.require_env:
        return 1
    teams = f" ({len(config.teams)} teams)" if config is not None else ""
    note = f"; {len(unset)} environment variable(s) unset" if unset else ""
    print(f"{args.path}: OK{teams}{note}")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    config = _load_or_exit(_config_path(args.config))
    if args.team not in config.teams:
        print(f"error: team {args.team!r} is not in the config", file=sys.stderr)
        return 1
    if config.auth.hs_secret is None:
        print("error: auth.hs_secret is not set; tokens come from your IdP", file=sys.stderr)
        return 1
    print(mint_configured_token(config.auth, args.team, ttl_seconds=args.ttl, user=args.user))
    return 0


def _redis_config(
    args: argparse.Namespace, embedded_hint: str, *, cache: bool = False
) -> GatewayConfig:
    """The config of a command that reads Redis directly (with an optional --team): the
    quota store's, or with ``cache`` the cache's (``cache.redis_url``, else the store's)."""
    from gateway.stores import cache_url

    config = _load_or_exit(_config_path(args.config))
    if (cache_url(config) if cache else config.store.redis_url) is None:
        setting = "cache.redis_url or store.redis_url" if cache else "store.redis_url"
        print(f"error: no {setting}: {embedded_hint}", file=sys.stderr)
        raise SystemExit(1)
    if args.team is not None and args.team not in config.teams:
        print(f"error: team {args.team!r} is not in the config", file=sys.stderr)
        raise SystemExit(1)
    return config


def cmd_usage(args: argparse.Namespace) -> int:
    config = _redis_config(
        args,
        "the embedded store lives inside the gateway process; ask it with GET /v1/gateway/usage",
    )
    if args.user is not None and args.team is None:
        print("error: --user needs --team (a user's rules are their team's)", file=sys.stderr)
        return 1
    teams = [args.team] if args.team else list(config.teams)
    rows = asyncio.run(_usage_rows(config, teams, args.user))
    if rows is None:
        print("error: the quota store is unreachable", file=sys.stderr)
        return 1
    header: tuple[object, ...] = (
        "TEAM",
        "METRIC",
        "WINDOW",
        "MODELS",
        "LIMIT",
        "USED",
        "RESERVED",
        "REMAINING",
        "RESETS",
    )
    if args.user is not None:
        header = (header[0], "USER", *header[1:])
    else:
        rows = [(row[0], *row[2:]) for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


async def _usage_rows(
    config: GatewayConfig, teams: list[str], user: str | None = None
) -> list[tuple[object, ...]] | None:
    """Rows of (team, user or "-", metric, window, models, limit, used, reserved, remaining,
    resets); ``user``'s per-user rules follow the team's."""
    from gateway.errors import StoreUnavailableError
    from gateway.pipeline import usage_entry
    from gateway.quota.service import QuotaService
    from gateway.stores import build_quota_store

    store = await build_quota_store(config)
    service = QuotaService(store, on_error="closed", hold_seconds=0)
    rows: list[tuple[object, ...]] = []
    try:
        for team in teams:
            found = [("-", u) for u in await service.usage(team, config.quota_rules(team))]
            if user is not None:
                mine = await service.usage(team, config.user_quota_rules(team), user=user)
                found += [(user, u) for u in mine]
            for owner, usage in found:
                entry = usage_entry(usage)
                rows.append(
                    (
                        team,
                        owner,
                        entry["metric"],
                        entry["window"],
                        ",".join(entry["models"] or ["*"]),
                        entry["limit"],
                        entry["used"],
                        entry["reserved"],
                        entry["remaining"],
                        entry["resets_at"],
                    )
                )
    except StoreUnavailableError:
        return None
    finally:
        await store.close()
    return rows


def cmd_cache_purge(args: argparse.Namespace) -> int:
    config = _redis_config(
        args,
        "the embedded cache lives inside the gateway process and empties when it restarts",
        cache=True,
    )
    scope = None if args.team is None else f"team:{args.team}"
    try:
        removed = asyncio.run(_purge(config, scope))
    except Exception as exc:  # a CLI reports any failure in one line
        print(f"error: purge failed: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"removed {removed} cache entries" + (f" of team {args.team}" if args.team else ""))
    return 0


async def _purge(config: GatewayConfig, scope: str | None) -> int:
    from gateway.stores import build_cache_backend

    backend = await build_cache_backend(config)
    try:
        return await backend.purge(scope)
    finally:
        await backend.close()


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    from gateway.mock import run_mock_upstream

    configure_logging("INFO")
    run_mock_upstream(args.host, args.port, args.api_key or None)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import StartupError, serve

    _install_uvloop()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve(
                    _config_path(args.config),
                    os.environ,
                    with_mock=args.mock_upstream,
                    host=args.host,
                    port=args.port,
                )
            )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StartupError as exc:
        log.error(str(exc))
        return 1
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI API gateway for teams.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", help=f"config file (default $GATEWAY_CONFIG or {DEFAULT_CONFIG})"
    )
    serve.add_argument(
        "--mock-upstream",
        action="store_true",
        help="start the offline mock OpenAI upstream in-process and send requests there",
    )
    serve.add_argument("--host", help="listen address (overrides server.host of the config)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port of the config)")
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="mint an HS team token with the configured secret")
    token.add_argument("--team", required=True)
    token.add_argument("--ttl", type=parse_duration, default=3600, help="e.g. 30m, 1h, 7d")
    token.add_argument("--user", help="the person the token names (auth.user_claim)")
    token.add_argument("--config")
    token.set_defaults(func=cmd_token)

    check = sub.add_parser("check-config", help="validate a config file; exit 0 or 1")
    check.add_argument("path", nargs="?", default=None)
    check.add_argument(
        "--require-env",
        action="store_true",
        help="treat unset environment variables as errors (by default they are warnings)",
    )
    check.set_defaults(func=cmd_check_config)

    schema = sub.add_parser("config-schema", help="print the config's JSON Schema")
    schema.set_defaults(func=cmd_config_schema)

    usage = sub.add_parser("usage", help="print each team's quota use from the store")
    usage.add_argument("--team")
    usage.add_argument("--user", help="with --team: also this user's per-user rules")
    usage.add_argument("--config")
    usage.set_defaults(func=cmd_usage)
    restore = usage.add_subparsers(dest="usage_command").add_parser(
        "restore", help="after a quota Redis data loss: replay the access log into the windows"
    )
    usage_restore.add_arguments(restore)
    restore.set_defaults(func=lambda a: usage_restore.run(a, _load_or_exit(_config_path(a.config))))

    cache = sub.add_parser("cache", help="response cache maintenance")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    purge = cache_sub.add_parser("purge", help="delete cached responses (all, or one team's)")
    purge.add_argument("--team")
    purge.add_argument("--config")
    purge.set_defaults(func=cmd_cache_purge)

    mock = sub.add_parser("mock-upstream", help="run the OpenAI-compatible mock server")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8081)
    mock.add_argument("--api-key", default=os.environ.get("MOCK_API_KEY", "sk-mock"))
    mock.set_defaults(func=cmd_mock_upstream)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        args.path = _config_path(args.path)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
