"""Who may import whom inside markd (docs/architecture.md, "Who may import whom").

Every ``import`` and ``from … import`` of a ``markd`` module is read from the source with
``ast`` — at module level, inside functions and under ``TYPE_CHECKING`` alike — and checked
against the layer contract; and the import graph must have no cycle. A backend named by a
string in a registry and imported when selected is not an import statement, so it does not
count.

Importing ``markd.a.b`` runs ``markd/a/__init__.py`` too, so for the layer contract an
import counts against every package on the way down, not only the module named.

:data:`KNOWN` would list breaches tolerated for a while; it is empty, and the test fails on any
breach not in it and on any entry of it that no longer happens, so it can only shrink.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import markd

PACKAGE = Path(markd.__file__).parent

#: Layers, bottom to top. A module may import its own package and lower layers.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundations",
        (
            "markd",
            "markd.errors",
            "markd.codes",
            "markd.numbers",
            "markd.money",
            "markd.text",
            "markd.secrets",
            "markd.urls",
            "markd.proxy",
            "markd.samples",
            "markd.systemd",
            "markd.http",
            "markd.validation",
            "markd.listen",
        ),
    ),
    (
        "domain",
        (
            "markd.store",
            "markd.scanners",
            "markd.checks",
            "markd.fiscal",
            "markd.receipts",
            "markd.catalog",
        ),
    ),
    ("configuration", ("markd.config",)),
    (
        "application",
        ("markd.sale", "markd.service", "markd.api", "markd.events", "markd.fronts"),
    ),
    ("top", ("markd.cli", "markd.demo")),
)
#: Domain packages that may use another domain package.
DOMAIN_ALLOWED = {
    ("markd.checks", "markd.store"),
    ("markd.fiscal", "markd.receipts"),
    ("markd.receipts", "markd.checks"),  # a receipt item carries the verdict that allowed it
}
#: Single modules a lower layer may use: pure helpers with no upward import of their own.
#: None left.
CROSS_ALLOWED: set[tuple[str, str]] = set()
#: Emulators stand apart: they may import foundations only (never a client, never fiscal).
EMULATORS = "markd.emulators"
#: Test machinery: production never imports it.
TESTING = "markd.testing"

#: The demo exists to run the real service against the emulators, in one process.
EMULATOR_USERS = ("markd.demo",)

#: Breaches still to remove, as (importer, imported) module names.
KNOWN: set[tuple[str, str]] = set()
#: Import cycles still to cut (each a sorted list of the modules in it).
KNOWN_CYCLES: list[list[str]] = []


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The markd modules ``name`` imports (a ``from package import module`` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "markd":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "markd":
                continue
            yield target
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    yield f"{target}.{alias.name}"


@functools.cache
def parsed_graph() -> tuple[tuple[str, frozenset[str]], ...]:
    """The import graph of the sources, parsed once a run (about a second and a half); frozen,
    so no test can change what another reads."""
    known = modules()
    return tuple(
        (name, frozenset(t for t in imports(name, path, known) if t in known and t != name))
        for name, path in known.items()
    )


def graph() -> dict[str, set[str]]:
    """A copy of its own for each caller: module → the markd modules it imports."""
    return {name: set(targets) for name, targets in parsed_graph()}


def with_packages(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """``edges`` plus the packages each import runs on its way (``markd.a.b`` runs
    ``markd.a``'s ``__init__``), except the importer's own packages."""
    out = {}
    for importer, targets in edges.items():
        found = set(targets)
        for target in targets:
            parts = target.split(".")
            for cut in range(2, len(parts)):
                package = ".".join(parts[:cut])
                if (
                    package in edges
                    and not importer.startswith(package + ".")
                    and package != importer
                ):
                    found.add(package)
        out[importer] = found
    return out


def owner(name: str, groups: tuple[str, ...]) -> str | None:
    """The longest group (package prefix) ``name`` belongs to."""
    best = None
    for group in groups:
        # "markd" is the package's own __init__ alone, not everything under it: a module no
        # layer names must be reported, not taken for a foundation.
        under = name.startswith(group + ".") and group != "markd"
        if (name == group or under) and (best is None or len(group) > len(best)):
            best = group
    return best


def layer_of(name: str) -> tuple[int, str] | None:
    all_groups = tuple(g for _, groups in LAYERS for g in groups)
    group = owner(name, all_groups)
    if group is None:
        return None
    for index, (_, groups) in enumerate(LAYERS):
        if group in groups:
            return index, group
    return None  # pragma: no cover


def breach(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (None when it may)."""
    if owner(imported, (TESTING,)) and not owner(importer, (TESTING,)):
        return "production code imports test machinery"
    if owner(importer, (EMULATORS,)):
        if owner(imported, (EMULATORS,)):
            return None
        found = layer_of(imported)
        if found is None or found[0] != 0:
            return "an emulator imports more than the foundations"
        return None
    if owner(importer, (TESTING,)):
        return None
    if owner(imported, (EMULATORS,)):
        if owner(importer, EMULATOR_USERS):
            return None
        return "production code imports an emulator"
    if (importer, imported) in CROSS_ALLOWED:
        return None
    mine, theirs = layer_of(importer), layer_of(imported)
    if mine is None or theirs is None:
        return f"not placed in a layer: {importer if mine is None else imported}"
    if mine[1] == theirs[1]:
        return None
    if theirs[0] > mine[0]:
        return f"{LAYERS[mine[0]][0]} imports {LAYERS[theirs[0]][0]}"
    if mine[0] == theirs[0] == 1 and (mine[1], theirs[1]) not in DOMAIN_ALLOWED:
        return "one domain package imports another"
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    edges = graph()
    # A package importing its own submodules (re-exports in __init__) is not a cycle of
    # design; leave those edges out.
    for name in edges:
        edges[name] = {t for t in edges[name] if not t.startswith(name + ".")}
    assert cycles(edges) == KNOWN_CYCLES


def test_every_import_keeps_the_layer_contract() -> None:
    edges = with_packages(graph())
    found = {
        (importer, imported): why
        for importer, targets in edges.items()
        for imported in targets
        if (why := breach(importer, imported)) is not None
    }
    new = {pair: why for pair, why in found.items() if pair not in KNOWN}
    assert new == {}, "imports the layer contract forbids"
    gone = KNOWN - set(found)
    assert gone == set(), "fixed: remove these from KNOWN"


def test_the_contract_itself_catches_what_it_should() -> None:
    assert breach("markd.store.core", "markd.checks.chain") == "one domain package imports another"
    assert breach("markd.checks.chain", "markd.store") is None
    assert breach("markd.codes", "markd.config") == "foundations imports configuration"
    assert breach("markd.service", "markd.testing.faults") == (
        "production code imports test machinery"
    )
    assert breach("markd.emulators.crpt_cdn", "markd.checks.online") == (
        "an emulator imports more than the foundations"
    )
    assert breach("markd.fiscal.base", "markd.emulators.virtual_kkt") == (
        "production code imports an emulator"
    )
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    # An import of one module runs its packages' __init__ too, and that counts.
    edges = {
        "markd.config.schema": {"markd.api.listeners"},
        "markd.api": set(),
        "markd.api.listeners": set(),
    }
    assert with_packages(edges)["markd.config.schema"] == {"markd.api.listeners", "markd.api"}
    assert breach("markd.config.schema", "markd.api") == "configuration imports application"
    # A module no layer names is reported, never taken for a foundation.
    assert breach("markd.service.scanloop", "markd.unplaced") == (
        "not placed in a layer: markd.unplaced"
    )


# --------------------------------------------------------------------------------------------
# Test machinery stays out of production (issue 12, item 9)

#: Beside production: test machinery itself, and the emulators (test equipment, shipped so an
#: integrator can run them).
NOT_PRODUCTION = (TESTING, EMULATORS)
#: What switches a test hook on; production code must not know these names.
TEST_HOOK_NAMES = ("MARKD_TEST_HOOKS", "MARKD_FISCAL_KILL_AT", "kill_point")


def production_imports_of_testing(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The imports of ``markd.testing`` (any module of it) by a module outside it."""
    return {
        (importer, imported)
        for importer, targets in edges.items()
        for imported in targets
        if owner(imported, (TESTING,)) and not owner(importer, (TESTING,))
    }


def test_production_code_never_imports_the_test_machinery() -> None:
    assert production_imports_of_testing(graph()) == set()
    # The rule itself bites: an import of a test module from the daemon would be found.
    assert production_imports_of_testing(
        {"markd.fiscal.session": {"markd.testing.killpoints"}, "markd.testing.hang": {"markd"}}
    ) == {("markd.fiscal.session", "markd.testing.killpoints")}


def test_production_code_names_no_test_hook() -> None:
    named = {
        (name, hook)
        for name, path in modules().items()
        if not owner(name, NOT_PRODUCTION)
        for hook in TEST_HOOK_NAMES
        if hook in path.read_text(encoding="utf-8")
    }
    assert named == set()


def test_the_daemon_and_the_sale_path_load_no_test_machinery() -> None:
    """Importing what a till runs (the daemon's program, the service, the sale desk, the
    session with its recovery, the ATOL backend) leaves ``markd.testing`` unloaded."""
    probe = (
        "import sys\n"
        "import markd.cli.markd, markd.cli.markctl, markd.service, markd.sale\n"
        "import markd.fiscal.session, markd.fiscal.recovery, markd.fiscal.atol\n"
        "print(sorted(m for m in sys.modules if m.startswith('markd.testing')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
