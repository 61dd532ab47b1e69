"""The map in docs/architecture.md stays true, and dependencies point one way (no import cycles)."""

import ast
import re
from pathlib import Path

from dbexp import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
HEADER = "| group | owner module | holds |"


def _owner_table() -> dict[str, str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    assert HEADER in text, f"docs/architecture.md has no table headed {HEADER}"
    rows = {}
    for line in text.split(HEADER, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        group, owner, _ = (cell.strip() for cell in line.strip("|").split("|", 2))
        rows[group] = owner
    return rows


def test_every_config_group_names_an_owner_module_that_exists():
    table = _owner_table()
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert sorted(table) == groups, "a conf/ group without a row in docs/architecture.md (or a row without a group)"
    for group, owner in table.items():
        assert (REPO / owner).is_file(), f"{group}: owner {owner} does not exist"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at the top or inside a function), as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _modules(package: str) -> dict[str, Path]:
    root = REPO / package
    return {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
        if "assets" not in p.parts
    }


def _graph() -> dict[str, set[str]]:
    modules = {**_modules("dbexp"), **_modules("hydra_plugins")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


#: The layers of docs/architecture.md ("Dependencies point one way"): a module imports only from its own layer
#: and the ones before it.
LAYERS = [
    "errors console atomic_files redaction extras fingerprint images tokenizer dreambench losses metrics sampling "
    "toy.world",
    "config config_roles metric_suites sweep_trial sweep_tracking",
    "model_loading finetune memory optimization datamodule encoding_cache prior_cache trained_cache checkpointing "
    "dreambooth_module metric_models toy.judge toy.oracle eval_protocol validation best_step tracking export "
    "original_layout pruning trial_retention",
    "run",
    "train generate evaluate compare run_collection cache bench bench_harness bench_train bench_disk bench_replay "
    "toy.pretrain toy.subjects",
]
PACKAGES = ("dbexp", "dbexp.conf", "dbexp.sweeps", "dbexp.toy")


def test_imports_point_one_way_through_the_layers():
    layer = {f"dbexp.{m}": n for n, names in enumerate(LAYERS) for m in names.split()}
    graph = _graph()
    unplaced = sorted(m for m in graph if m.startswith("dbexp") and m not in layer and m not in PACKAGES)
    assert not unplaced, f"modules in no layer of docs/architecture.md: {unplaced}"
    upward = [f"{m} -> {d}" for m in layer for d in sorted(graph[m]) if d in layer and layer[d] > layer[m]]
    assert not upward


def test_dbexp_core_never_imports_the_sweeper_plugin():
    offenders = {
        m: sorted(d)
        for m, d in _graph().items()
        if m.startswith("dbexp") and any(re.match(r"hydra_plugins", x) for x in d)
    }
    assert not offenders, offenders


def test_no_import_cycles():
    graph = _graph()
    cycles, stack, index, low, on_stack = [], [], {}, {}, set()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # A package's __init__ importing its own submodules is not a cycle of concerns.
    cycles = [c for c in cycles if not any(all(m == p or m.startswith(f"{p}.") for m in c) for p in c)]
    assert not cycles, cycles
