"""The package's layering: a module may import its own layer and the ones below, never above.

leaves (pure: formats, errors, config, API specs, SSE framing) -> components (one outside
system or one concern each) -> pipeline (the request path) -> app (wiring, lifecycle) -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

ROOT = Path(gateway.__file__).parent

#: Longest matching prefix wins.
LAYERS: dict[str, int] = {
    "gateway.json_codec": 0,
    "gateway.errors": 0,
    "gateway.log": 0,
    "gateway.config": 0,
    "gateway.config_loader": 0,
    "gateway.config_base": 0,
    "gateway.config_storage": 0,
    "gateway.config_admission": 0,
    "gateway.config_pricing": 0,
    "gateway.config_quota": 0,
    "gateway.apis": 0,
    "gateway.sse": 0,
    "gateway.metrics": 0,
    "gateway.quota.windows": 0,
    "gateway.quota.pricing": 0,
    "gateway.auth": 1,
    "gateway.cache": 1,
    "gateway.quota": 1,
    "gateway.stores": 1,
    "gateway.usage_restore": 1,
    "gateway.storage": 1,
    "gateway.upstream": 1,
    "gateway.mock": 1,
    "gateway.state": 1,
    "gateway.pipeline": 2,
    "gateway.app": 3,
    "gateway.reload": 3,
    "gateway.server": 3,
    "gateway.cli": 4,
    "gateway.__main__": 4,
}
NAMES = ["leaves", "components", "pipeline", "app", "cli"]


def layer(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for prefix, rank in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > best[0]
        ):
            best = (len(prefix), rank)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST) -> set[str]:
    """Every gateway module a file imports, lazily (inside functions) or not."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gateway":
                found.update(f"gateway.{a.name}" for a in node.names)
            elif node.module.startswith("gateway."):
                found.add(node.module)
    return found


def test_every_module_has_a_layer() -> None:
    missing = [
        module_name(p)
        for p in ROOT.rglob("*.py")
        if module_name(p) != "gateway" and layer(module_name(p)) is None
    ]
    assert not missing, f"add these to LAYERS: {missing}"


def test_no_module_imports_upward() -> None:
    upward: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        own = layer(name)
        if own is None:
            continue
        for target in imported(ast.parse(path.read_text(), str(path))):
            rank = layer(target)
            if rank is not None and rank > own:
                upward.append(f"{name} ({NAMES[own]}) imports {target} ({NAMES[rank]})")
    assert not upward, "\n".join(upward)


def test_the_check_catches_an_upward_import() -> None:
    tree = ast.parse("def f():\n    from gateway.pipeline import handle_proxy\n")
    assert {layer(t) for t in imported(tree)} == {2}
    assert layer("gateway.apis.chat") == 0
    assert layer("gateway.pipeline.metered") == 2
