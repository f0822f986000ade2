"""The house rules of the package, checked on its source: the public API the README uses exists,
arrows run one way (formats -> plan -> assembly -> loader -> integrations / applications), there
are no import circles, no module reads another's private names, and modules stay small."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpuload"

# Each unit's layer: a module may import its own unit and units of lower layers only.
LAYERS = {
    "errors": 0,
    "bmmc": 0,
    "bmmc.schema": 0,
    "checks": 1,
    "user_cache": 1,
    "splits": 1,
    "kernels": 2,
    "formats": 2,
    "sampler": 2,
    "user_sampler": 2,
    "bmmc.synth": 2,
    "plan": 3,
    "device": 4,
    "fetch": 5,
    "selection": 5,
    "handoff": 5,
    "batch_columns": 5,
    "assembly": 6,
    "background": 6,
    "epoch": 7,
    "options": 7,
    "loader": 8,
    "integrations": 9,
    "reference": 9,
    # gpuload.lightning / gpuload.scvi: the public names of those integrations (re-exports).
    "lightning": 10,
    "scvi": 10,
    "cli": 10,
    "__init__": 11,
    "__main__": 12,
}
# Arrows against the flow allowed: none (``pipeline="dali"`` is a hand-off the package registers,
# gpuload.handoff; the loader does not import it).
ALLOWED_UPWARD: set[tuple[str, str]] = set()
# Modules allowed over MAX_LINES, and why.
MAX_LINES = 400
LONG_MODULES = {
    "bmmc/synth.py": "the generator of one dataset's whole schema (obs, var, obsm, uns, X, layers)",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)
        out[name] = path
    return out


def _unit(module: str) -> str:
    for unit in sorted(LAYERS, key=len, reverse=True):
        if module == unit or module.startswith(unit + "."):
            return unit
    raise AssertionError(f"gpuload.{module} belongs to no layer in tests/test_architecture.py")


def _imports(path: Path) -> set[str]:
    """gpuload modules ``path`` imports (module level and inside functions), without the prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpuload"):
            base = node.module.removeprefix("gpuload").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in _modules() else base or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("gpuload.") for a in node.names if a.name.startswith("gpuload.")}
    return found


def test_readme_names_are_public():
    import gpuload

    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"gpuload\.([A-Za-z_]\w*)\(", readme))
    assert used >= {"MultiomeLoader"}
    for name in used | {"open_multiome", "MultiomeStore", "write_synthetic", "GpuloadError"}:
        assert hasattr(gpuload, name), f"the README uses gpuload.{name}, which the package does not export"
        assert name in gpuload.__all__


def test_arrows_run_one_way():
    wrong = []
    for module, path in _modules().items():
        here = _unit(module)
        for target in _imports(path):
            there = _unit(target)
            if there != here and LAYERS[there] >= LAYERS[here] and (here, target) not in ALLOWED_UPWARD:
                wrong.append(f"gpuload.{module} imports gpuload.{target} ({here} -> {there})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = {m: {t for t in _imports(p) if t in _modules() and t != m} for m, p in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_private_reads_across_modules():
    """``obj._name`` only on ``self``/``cls``/``super()``: what a neighbour needs is public API."""
    hits = []
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "examples").glob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and re.match(r"_[a-z]", node.attr):
                value = node.value
                owner = value.id if isinstance(value, ast.Name) else None
                if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                    owner = "super"
                if owner not in ("self", "cls", "super") and (owner, node.attr) != ("os", "_exit"):
                    # os._exit is the standard library's public exit-now, not a private read
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not hits, "\n".join(hits)


def test_modules_stay_small():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= set(LONG_MODULES), f"modules over {MAX_LINES} lines: {long}"


def test_loader_class_is_thin():
    tree = ast.parse((PACKAGE / "loader.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MultiomeLoader"]
    docstring = ast.get_docstring(cls) or ""
    lines = cls.end_lineno - cls.lineno + 1 - len(docstring.splitlines())
    assert lines <= 200, f"MultiomeLoader has {lines} lines of code (docstring excluded)"


# What sits above the loader: applications and integrations.
APPLICATIONS = {"integrations", "reference", "cli", "lightning", "scvi"}


def test_applications_read_loaders_through_their_accessors():
    """Applications and integrations read a loader through its public accessors
    (``feature_masks``, ``obs_values``, ``categories``, ... of gpuload.selection), not through the
    plan or the store behind it: ``.plan`` is read on nothing but ``self``, and ``.store.<name>``
    only as ``self.store`` (an object reading the store it opened itself)."""
    hits = []
    for module, path in _modules().items():
        if _unit(module).split(".")[0] not in APPLICATIONS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute | ast.Subscript):
                continue
            inner = node.value
            reached = inner if isinstance(inner, ast.Attribute) and inner.attr == "store" else None
            if isinstance(node, ast.Attribute) and node.attr == "plan":
                reached = node
            if reached is not None and not (
                isinstance(reached.value, ast.Name) and reached.value.id == "self"
            ):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not hits, "\n".join(sorted(set(hits)))


# Device work outside gpuload/device: what would escape the backend's ledger and stream.
DEVICE_CALLS = re.compile(
    r"torch\.cuda\.|\bcupy\b|\bnumba\.cuda\b|from numba import cuda|\.record_stream\(|\.copy_\(|\.cuda\(|"
    r"\.to\(|device=|torch\.(zeros|ones|full|cat|stack|empty_like|zeros_like)\("
)


def test_device_work_goes_through_the_backend():
    """Only gpuload/device (and the kernels) touch device memory, streams and the GPU libraries:
    everything else asks the backend, so the ledger sees every operation."""
    allowed = {"device", "kernels", "reference", "integrations", "cli"}
    hits = []
    for module, path in _modules().items():
        if _unit(module).split(".")[0] in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if DEVICE_CALLS.search(code) and not code.strip().startswith(('"', "'")):
                hits.append(f"gpuload/{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def _architecture_rows() -> dict[str, int]:
    """ARCHITECTURE.md's table: each module path named in a row's module cell -> the row's layer."""
    rows = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and cells[2].isdigit():
            rows |= dict.fromkeys(re.findall(r"`([\w/]+\.py)`", cells[1]), int(cells[2]))
    return rows


def test_architecture_names_every_module_with_its_layer():
    """Every module file has a row in ARCHITECTURE.md's table (``| room | `path.py` | layer |
    what it holds |``, the path below gpuload/) giving its unit's layer; no row names a file that
    is gone. A new module needs only its row."""
    rows = _architecture_rows()
    files = {str(p.relative_to(PACKAGE)): module for module, p in _modules().items()}
    missing = sorted(set(files) - set(rows))
    assert not missing, f"add a row to ARCHITECTURE.md's table for: {missing}"
    gone = sorted(set(rows) - set(files))
    assert not gone, f"ARCHITECTURE.md names modules that do not exist: {gone}"
    wrong = {
        path: (rows[path], LAYERS[_unit(module)])
        for path, module in files.items()
        if rows[path] != LAYERS[_unit(module)]
    }
    assert not wrong, f"ARCHITECTURE.md's layer differs from LAYERS' (path: (written, LAYERS)): {wrong}"
