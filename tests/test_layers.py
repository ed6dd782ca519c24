"""The layers stay as drawn (docs/contracts.md): every `import` under app/ is read with ast,
function-level imports included, and checked against the forbidden edges below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"

# package -> modules it must not import (a name forbids the module and everything under it)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "app.engine": ("app", "sqlalchemy", "fastapi"),  # "app": anything of app outside app.engine
    "app.serving": ("app.db", "app.versions", "app.api", "app.jobs", "app.ops", "app.store", "sqlalchemy"),
    "app.store": ("app.db", "sqlalchemy", "app.api", "app.serving", "app.jobs", "app.versions", "app.ops"),
    "app.db": ("app.engine", "app.serving", "app.api", "app.jobs", "app.store", "app.versions", "app.ops"),
    "app.versions": ("app.api", "app.serving", "app.jobs", "app.ops"),
    "app.jobs": ("app.api", "app.serving"),
    "app.ops": ("app.api", "app.serving", "app.jobs"),
    "app.names": ("app.db", "app.store", "app.serving", "app.api", "app.jobs", "sqlalchemy"),
}
# the only modules outside app.api that may import app.api (the app's wiring and its server entry point)
API_IMPORTERS = ("app.main", "app.api")


def _module_name(path: Path) -> str:
    rel = path.relative_to(APP.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the file, wherever it is (functions included)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from app import versions` imports the module app.versions
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations() -> list[str]:
    out: list[str] = []
    for path in sorted(APP.rglob("*.py")):
        module = _module_name(path)
        rel = path.relative_to(APP.parent)
        for line, target in _imports(path):
            if target == "app":  # `from app import x`: x is checked as app.x
                continue
            for layer, banned in FORBIDDEN.items():
                if _under(module, layer):
                    out += [
                        f"{rel}:{line}: {module} imports {target}"
                        for b in banned
                        if _under(target, b) and not _under(target, layer)
                    ]
            if _under(target, "app.api") and not any(_under(module, m) for m in API_IMPORTERS):
                if not (module == "app.cli" and _under(target, "app.api.server")):  # `prompthub serve`
                    out.append(f"{rel}:{line}: {module} imports {target} (only app.main wires the API)")
    return sorted(set(out))


def test_no_import_crosses_a_forbidden_boundary():
    bad = _violations()
    assert not bad, "imports across a layer boundary:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source, module, expected",
    [
        ("from app.db import tasks\n", "app/serving/x.py", "app.serving.x imports app.db"),
        ("def f():\n    import sqlalchemy.orm\n", "app/store/x.py", "app.store.x imports sqlalchemy.orm"),
        ("from app import versions\n", "app/serving/x.py", "app.serving.x imports app.versions"),
        ("from ..db import errors\n", "app/store/x.py", "app.store.x imports app.db"),
        ("from app.api.errors import ApiError\n", "app/jobs/x.py", "app.jobs.x imports app.api"),
        ("from app.config import Settings\n", "app/engine/x.py", "app.engine.x imports app.config"),
    ],
)
def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch, source, module, expected):
    """The checker itself: a forbidden import at module or function level, absolute or relative."""
    fake = tmp_path / "app"
    for pkg in ("serving", "store", "jobs", "engine"):
        (fake / pkg).mkdir(parents=True)
    (fake / module.removeprefix("app/")).write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["APP"]), "APP", fake)
    assert any(expected in v for v in _violations()), _violations()
