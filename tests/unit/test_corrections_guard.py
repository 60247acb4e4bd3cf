"""Guard: every private name of Faust, mode and aiokafka that workers/corrections/ relies on
still exists, with the parameters the correction was written against.

Each correction module lists what it relies on in ``RELIES_ON``: ``module.Class.name`` for an
attribute, ``module.Class.name(param, ...)`` for a method. When a library release renames or
reshapes one, this test names it, and the correction must be checked against the new code
before the pin in pyproject.toml moves.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from typing import Any

import pytest

import workers.corrections

ENTRY = re.compile(r"(?P<path>[\w.]+?)(?:\((?P<params>[^)]*)\))?$")


def _modules() -> list[Any]:
    names = [m.name for m in pkgutil.iter_modules(workers.corrections.__path__)]
    return [importlib.import_module(f"workers.corrections.{name}") for name in sorted(names)]


def _entries() -> list[tuple[str, str]]:
    return [
        (module.__name__.rsplit(".", 1)[1], entry)
        for module in _modules()
        for entry in getattr(module, "RELIES_ON", ())
    ]


def _resolve(path: str) -> tuple[Any, str, Any]:
    """(owner, name, the object or None when it is an instance attribute) for a dotted path."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:-1]:
            owner = getattr(owner, part)
        return owner, parts[-1], getattr(owner, parts[-1], None)
    raise AssertionError(f"no module in {path!r}")


def _assigned_in_source(owner: Any, name: str) -> bool:
    """An instance attribute: assigned as ``self.<name>`` in the class or a base's source."""
    pattern = re.compile(rf"self\.{re.escape(name)}\b\s*(:[^=]+)?=")
    for klass in inspect.getmro(owner):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def test_every_correction_says_what_it_relies_on() -> None:
    modules = {m.__name__.rsplit(".", 1)[1]: m for m in _modules()}
    for name in ("end_offsets", "fetch_only_read", "fetch_wait", "flow_control"):
        assert getattr(modules[name], "RELIES_ON", ()), name
    for name in ("handover", "producer", "seek", "app"):
        assert getattr(modules[name], "RELIES_ON", ()), name


@pytest.mark.parametrize(("correction", "entry"), _entries())
def test_the_private_names_a_correction_relies_on_are_unchanged(
    correction: str, entry: str
) -> None:
    match = ENTRY.fullmatch(entry)
    assert match, f"{correction}: cannot read {entry!r}"
    path, params = match["path"], match["params"]
    owner, name, found = _resolve(path)
    if found is None:
        assert inspect.isclass(owner) and _assigned_in_source(owner, name), (
            f"workers/corrections/{correction}.py relies on {path}, which is gone: "
            "check the correction against this release before moving the pin"
        )
        return
    if params is None:
        return
    function = getattr(found, "fget", None) or getattr(found, "__wrapped__", None) or found
    if not callable(function):  # mode's stampede descriptor wraps the method in .fun
        function = found.fun
    expected = [p.strip() for p in params.split(",") if p.strip()]
    actual = list(inspect.signature(function).parameters)
    assert actual == expected, (
        f"workers/corrections/{correction}.py relies on {path}({', '.join(expected)}), "
        f"now ({', '.join(actual)}): check the correction against this release"
    )
