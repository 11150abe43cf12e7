"""Reading the config file: YAML, ``${VAR}`` substitution, validation, error messages.

Substitution happens on parsed string scalars, never on the raw text, so an environment value
can't inject YAML structure. ``${VAR}`` must be set; ``${VAR:-default}`` falls back when the
variable is unset or empty; ``$$`` is a literal ``$``.

Errors name the file and the exact path of the bad field (``teams.ml.models[2]``), never a
value (secrets are among the values).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config import GatewayConfig


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why.

    ``only_unset`` is true when every problem is an unset environment variable (the caller
    asked to collect those rather than fail on the first; see ``parse_config``).
    """

    def __init__(self, message: str, *, only_unset: bool = False) -> None:
        super().__init__(message)
        self.only_unset = only_unset


@dataclass(frozen=True, slots=True)
class UnsetVariable:
    """A ``${NAME}`` reference (without a default) whose variable is unset or empty."""

    path: str
    name: str

    def __str__(self) -> str:
        return f"{self.path}: environment variable {self.name} is not set"


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _substitute(
    value: Any, path: str, env: Mapping[str, str], unset: list[UnsetVariable] | None
) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found:
                return found
            if default is not None:
                return default
            if found is not None:
                return found
            missing = UnsetVariable(path or "<root>", name)
            if unset is None:
                raise ConfigError(str(missing))
            unset.append(missing)
            return ""

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute(v, _join(path, k), env, unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", env, unset) for i, v in enumerate(value)]
    return value


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path or "<root>"


def _error_paths(error: ValidationError) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for item in error.errors(include_url=False, include_input=False):
        # Pydantic puts a dict key's own errors under "[key]"; the path is the key itself.
        loc = tuple(p for p in item["loc"] if p != "[key]")
        found.append((_location(loc), item["msg"]))
    return found


def format_validation_error(
    source: str, error: ValidationError, skip: frozenset[str] = frozenset()
) -> str:
    """One line per error, each naming the field's path; errors at ``skip`` paths left out."""
    lines = [f"{source}: invalid configuration"]
    lines += [f"  {path}: {msg}" for path, msg in _error_paths(error) if path not in skip]
    return "\n".join(lines)


def parse_config(
    data: Any,
    *,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    unset: list[UnsetVariable] | None = None,
) -> GatewayConfig:
    """Validate already-parsed YAML/JSON data.

    By default the first unset ``${VAR}`` is an error. With an ``unset`` list, each one is
    appended there and replaced by an empty string instead, so commands that do not need every
    variable (``gateway token``, ``check-config``) still work; a validation error at the path of
    an unset variable is then put down to the variable. When that explains every error the
    ConfigError has ``only_unset``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        substituted = _substitute(data, "", os.environ if env is None else env, unset)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return GatewayConfig.model_validate(substituted)
    except ValidationError as exc:
        explained = frozenset(u.path for u in unset or [])
        message = format_validation_error(source, exc, explained)
        if "\n" in message:
            raise ConfigError(message) from None
        failed = {path for path, _ in _error_paths(exc)}
        needed = [f"  {u}" for u in unset or [] if u.path in failed]
        lines = [f"{source}: needs unset environment variables", *needed]
        raise ConfigError("\n".join(lines), only_unset=True) from None


def load_config(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    unset: list[UnsetVariable] | None = None,
) -> GatewayConfig:
    """Read, substitute and validate a YAML file; raises ConfigError with the file and path."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if isinstance(data, dict):
        data = _with_included_prices(data, Path(path).parent, source)
    return parse_config(data, source=source, env=env, unset=unset)


def included_prices_path(config_dir: Path, include: str) -> Path:
    """Where ``pricing.include`` points: relative paths are relative to the config file."""
    return config_dir / include


def _with_included_prices(data: dict[str, Any], config_dir: Path, source: str) -> dict[str, Any]:
    """``pricing.models`` with the included price list's models after the config's own (first
    match wins, so the config's override the list's)."""
    pricing = data.get("pricing")
    if not isinstance(pricing, dict) or not isinstance(pricing.get("include"), str):
        return data
    path = included_prices_path(config_dir, pricing["include"])
    try:
        listed = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"{source}: pricing.include: cannot read {path}: {exc.strerror or exc}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: pricing.include: {path} is not valid YAML: {exc}") from None
    if isinstance(listed, dict) and isinstance(listed.get("pricing"), dict):
        listed = listed["pricing"]  # a file written as a config fragment
    if not isinstance(listed, dict) or not isinstance(listed.get("models", {}), dict):
        raise ConfigError(f"{source}: pricing.include: {path} must be a mapping with `models`")
    unknown = set(listed) - {"as_of", "models"}
    if unknown:
        raise ConfigError(
            f"{source}: pricing.include: {path}: unknown keys {', '.join(sorted(unknown))}"
        )
    own = pricing.get("models") or {}
    if not isinstance(own, dict):
        return data  # validation names pricing.models
    models = dict(own)
    for pattern, price in (listed.get("models") or {}).items():
        models.setdefault(pattern, price)
    merged = {**pricing, "models": models}
    merged.setdefault("as_of", listed.get("as_of"))
    return {**data, "pricing": merged}
