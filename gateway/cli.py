"""Command line: ``gateway serve | token | check-config | config-schema | mock-upstream``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from gateway import __version__
from gateway.auth import mint_token
from gateway.config import ConfigError, GatewayConfig, config_json_schema, load_config
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


def _load_or_exit(path: str, env: dict[str, str] | None = None) -> GatewayConfig:
    try:
        return load_config(path, env=env)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.path}: OK ({len(config.teams)} teams)")
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
    algorithm = next((a for a in config.auth.algorithms if a.startswith("HS")), "HS256")
    audience = config.auth.audience
    print(
        mint_token(
            config.auth.hs_secret.get_secret_value(),
            args.team,
            ttl_seconds=args.ttl,
            algorithm=algorithm,
            team_claim=config.auth.team_claim,
            issuer=config.auth.issuer,
            audience=audience[0] if isinstance(audience, list) else audience,
        )
    )
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
    rows = asyncio.run(_usage_rows(config, [args.team] if args.team else list(config.teams)))
    if rows is None:
        print("error: the quota store is unreachable", file=sys.stderr)
        return 1
    header = (
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
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


async def _usage_rows(config: GatewayConfig, teams: list[str]) -> list[tuple[object, ...]] | None:
    from gateway.errors import StoreUnavailableError
    from gateway.handlers import usage_entry
    from gateway.quota.service import QuotaService
    from gateway.stores import build_quota_store

    store = await build_quota_store(config)
    service = QuotaService(store, on_error="closed", hold_seconds=0)
    rows: list[tuple[object, ...]] = []
    try:
        for team in teams:
            for usage in await service.usage(team, config.quota_rules(team)):
                entry = usage_entry(usage)
                rows.append(
                    (
                        team,
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
    from gateway.mock_upstream import run_mock_upstream

    configure_logging("INFO")
    run_mock_upstream(args.host, args.port, args.api_key or None)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_config_path(args.config), args.mock_upstream))
    return 0


async def _serve(config_path: str, with_mock: bool) -> None:
    from gateway.app import create_app, create_metrics_app
    from gateway.reload import ConfigReloader
    from gateway.state import STATE

    runners: list[web.AppRunner] = []
    env = dict(os.environ)
    if with_mock:
        from gateway.mock_upstream import start_mock_upstream

        mock_key = "sk-mock-" + secrets.token_hex(8)
        mock = await start_mock_upstream(host="127.0.0.1", port=0, api_key=mock_key)
        env["OPENAI_BASE_URL"] = mock.url
        env["OPENAI_API_KEY"] = mock_key
    config = _load_or_exit(config_path, env)
    configure_logging(config.logging.level)
    if not config.upstream.api_key.get_secret_value():
        log.error("upstream.api_key is empty: set OPENAI_API_KEY or use --mock-upstream")
        raise SystemExit(1)

    app = create_app(config)
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=config.server.shutdown_grace_seconds
    )
    await runner.setup()
    runners.append(runner)
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    if config.metrics.enabled and config.metrics.port is not None:
        metrics_runner = web.AppRunner(create_metrics_app(app), access_log=None)
        await metrics_runner.setup()
        runners.append(metrics_runner)
        await web.TCPSite(metrics_runner, config.server.host, config.metrics.port).start()
    log.info(
        "gateway started",
        extra={
            "version": __version__,
            "listen": f"{config.server.host}:{config.server.port}",
            "upstream": str(config.upstream.base_url),
            "mock_upstream": with_mock,
            "teams": len(config.teams),
        },
    )
    _print_banner(config, with_mock)

    state = app[STATE]
    reloader = ConfigReloader(config_path, state, env=env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload)
    watcher = None
    if config.server.config_poll_seconds > 0:
        watcher = loop.create_task(reloader.watch(config.server.config_poll_seconds))
    await stop.wait()

    # Drain: unready first, so load balancers stop sending; then stop listening and give
    # in-flight requests and streams the grace period (aiohttp's shutdown_timeout).
    state.draining = True
    server_config = state.config.server
    log.info("gateway draining", extra={"grace_seconds": server_config.shutdown_grace_seconds})
    if watcher is not None:
        watcher.cancel()
    if server_config.shutdown_delay_seconds:
        await asyncio.sleep(server_config.shutdown_delay_seconds)
    for r in runners:
        await r.cleanup()
    if with_mock:
        await mock.close()
    log.info("gateway stopped")


def _print_banner(config: GatewayConfig, with_mock: bool) -> None:
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::", "") else config.server.host
    base = f"http://{host}:{config.server.port}/v1"
    team = next((name for name, t in config.teams.items() if t.enabled), None)
    lines = [
        "",
        f"  OpenAI gateway listening on {base}"
        + ("  (offline mock upstream: no OPENAI_API_KEY set)" if with_mock else ""),
    ]
    # A working token in the output is for someone at a terminal (or the offline demo); a
    # pod's log pipeline must never receive one.
    interactive = with_mock or sys.stderr.isatty()
    if not interactive:
        lines.append("  Mint a team token with: gateway token --team <team> --ttl 24h\n")
    elif team and config.auth.hs_secret is not None:
        token = mint_token(
            config.auth.hs_secret.get_secret_value(),
            team,
            ttl_seconds=86400,
            algorithm=next((a for a in config.auth.algorithms if a.startswith("HS")), "HS256"),
            team_claim=config.auth.team_claim,
            issuer=config.auth.issuer,
            audience=config.auth.audience
            if isinstance(config.auth.audience, str)
            else (config.auth.audience[0] if config.auth.audience else None),
        )
        model = "gpt-4o-mini"
        lines += [
            f"  Team token for {team!r} (valid 24h):",
            f"    export GATEWAY_TOKEN={token}",
            "",
            "  Try it with curl:",
            f'    curl -s {base}/chat/completions -H "Authorization: Bearer $GATEWAY_TOKEN" \\',
            "      -H 'Content-Type: application/json' \\",
            f'      -d \'{{"model": "{model}", "messages": '
            '[{"role": "user", "content": "Hello"}]}\'',
            "",
            "  Or with the OpenAI Python SDK:",
            "    from openai import OpenAI; import os",
            f'    client = OpenAI(base_url="{base}", api_key=os.environ["GATEWAY_TOKEN"])',
            f'    print(client.chat.completions.create(model="{model}", '
            'messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)',
            "",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)


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
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="mint an HS team token with the configured secret")
    token.add_argument("--team", required=True)
    token.add_argument("--ttl", type=parse_duration, default=3600, help="e.g. 30m, 1h, 7d")
    token.add_argument("--config")
    token.set_defaults(func=cmd_token)

    check = sub.add_parser("check-config", help="validate a config file; exit 0 or 1")
    check.add_argument("path", nargs="?", default=None)
    check.set_defaults(func=cmd_check_config)

    schema = sub.add_parser("config-schema", help="print the config's JSON Schema")
    schema.set_defaults(func=cmd_config_schema)

    usage = sub.add_parser("usage", help="print each team's quota use from the store")
    usage.add_argument("--team")
    usage.add_argument("--config")
    usage.set_defaults(func=cmd_usage)

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
