"""The code part of a cache key: a digest of every ``deepcuts`` module a piece of code imports.

A stage names the code it runs (its own module, a strategy class); the digest covers those modules
and, transitively, every ``deepcuts`` module they import, at the top or inside a function. So an
edit to a helper (``ActivationMeans`` in ``strategies/gradcam.py``, read by Smooth-Cut) changes
the key of every stage that can run it, and no list of files is kept by hand.

Imports are read from the source (``ast``), not from ``sys.modules``: what a module *may* run is
what it names. ``from deepcuts.pkg import name`` follows ``pkg/name.py`` when that is a module,
else ``pkg/__init__.py``; a parent package's ``__init__`` is not followed otherwise (ours hold
re-exports only). Library code is covered by the library versions in the key, not here.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the deepcuts folder
STDLIB = Path(inspect.getsourcefile(ast)).resolve().parent
ROOT = PACKAGE.name


def module_file(name: str) -> Path | None:
    """The source file of a ``deepcuts`` module (``deepcuts.pruning.masks``), or None."""
    parts = name.split(".")
    if parts[0] != ROOT:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _imports(name: str, path: Path, source: str) -> frozenset[str]:
    """The ``deepcuts`` modules ``source`` names in any import statement."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] != ROOT:
                continue
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.add(child if module_file(child) is not None else module)
    return frozenset(m for m in found if module_file(m) is not None)


@cache
def _source(path: Path, mtime_ns: int) -> str:
    return path.read_text()


def closure(*modules: str) -> list[str]:
    """Every ``deepcuts`` module reachable from ``modules`` through imports, sorted."""
    seen: set[str] = set()
    todo = [m for m in modules if module_file(m) is not None]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        todo.extend(_imports(name, path, _source(path, path.stat().st_mtime_ns)) - seen)
    return sorted(seen)


def modules_of(*targets: object) -> list[str]:
    """Module names of ``targets``: module names as given; for a class, every ``deepcuts`` class
    of its MRO; for a function or instance, the module that defines it (or its class)."""
    names: list[str] = []
    for target in targets:
        if isinstance(target, str):
            names.append(target)
        elif inspect.isclass(target):
            names.extend(c.__module__ for c in inspect.getmro(target))
        elif inspect.ismodule(target):
            names.append(target.__name__)
        else:  # a function (its module) or an instance (its class's module)
            names.append(getattr(target, "__module__", None) or type(target).__module__)
    return [n for n in names if n.split(".")[0] == ROOT]


def code_files(*targets: object) -> list[str]:
    """The package-relative source files the digest of ``targets`` covers (for messages and tests)."""
    return [str(module_file(m).relative_to(PACKAGE.parent)) for m in closure(*modules_of(*targets))]


def plugin_files(*targets: object) -> list[Path]:
    """Source files of classes outside ``deepcuts`` in the MRO of class targets (a user's own
    strategy, ``_target_: my_scores.MyScore``), unless they belong to an installed library
    (site-packages: its version is what matters) or the standard library."""
    files = set()
    for target in targets:
        for cls in inspect.getmro(target) if inspect.isclass(target) else ():
            if cls.__module__.split(".")[0] == ROOT or cls.__module__ == "builtins":
                continue
            try:
                path = Path(inspect.getsourcefile(cls) or "")
            except TypeError:
                continue
            if path.is_file() and not {"site-packages", "dist-packages"} & set(path.parts) and not path.is_relative_to(STDLIB):
                files.add(path.resolve())
    return sorted(files)


def code_digest(*targets: object) -> str:
    """sha256 over the path and text of every module in the import closure of ``targets`` (and
    of the plugin classes among them, :func:`plugin_files`)."""
    h = hashlib.sha256()
    for name in closure(*modules_of(*targets)):
        path = module_file(name)
        h.update(name.encode() + b"\0" + _source(path, path.stat().st_mtime_ns).encode() + b"\0")
    for path in plugin_files(*targets):
        h.update(path.name.encode() + b"\0" + _source(path, path.stat().st_mtime_ns).encode() + b"\0")
    return h.hexdigest()[:24]
