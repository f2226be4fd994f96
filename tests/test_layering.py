"""Imports point one way: the layers of the code, checked on the source with ``ast``.

Layers, lowest first (a module may import its own layer and the ones below, never one above):

    0  core       types, I/O helpers, the config field helper and ConfigError (``core/``)
    1  rewards    graders and the collaboration rewards (``rewards/``)
    2  policies   device model, generation, cloud backends, router (``policies/``)
    3  envs       route, query, the shared rollout types, tasks, suites, prompts, LSRP, augmentation (``envs/``)
  3.5  evaluation the protocol, the device and cloud passes, metrics, tables, eval.py's suites, results and curves
                  (``evaluation/``)
  3.8  settings   the composed config of a run: every section, YAML and overrides (``settings/``)
    4  rl         GAPG, filtering, dual, the trainer loop, TRL-backed trainers, the config composition (``rl/``)
  4.5  serving    the served policy, its budget, batching, the OpenAI-compatible app, metrics (``serving/``)
    5  commands   train.py, eval.py, sweep.py, serve.py, benchmarks/, scripts/

Every import counts: module level and inside functions.  Checked: the import graph has no cycle; no edge goes
from a lower layer to a higher one (so no library module imports a command); every module has a layer; no
file outside tests/conftest.py edits ``sys.path``.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {
    "core": 0,
    "rewards": 1,
    "policies": 2,
    "envs": 3,
    "evaluation": 3.5,
    "settings": 3.8,
    "rl": 4,
    "serving": 4.5,
    "train": 5,
    "eval": 5,
    "sweep": 5,
    "serve": 5,
    "benchmarks": 5,
    "scripts": 5,
}
COMMANDS = {"train", "eval", "sweep", "serve", "benchmarks", "scripts"}
SKIP_DIRS = {".git", "tests", "outputs", "__pycache__", "configs", "docs", ".venv", "build"}


def _modules() -> dict[str, str]:
    """Every module of the repository (tests aside): dotted name -> file."""
    mods = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [
            d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
        ]
        for f in filenames:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                mods[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The repository module ``name`` names (or its longest known prefix), None for third-party code."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in MODULES:
            return ".".join(parts[:k])
    return None


def _package(mod: str) -> str:
    return mod.split(".")[0]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        edges = set()
        tree = ast.parse(open(path).read(), path)
        here = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)] if here else []
                    base = ".".join([*up, base] if base else up)
                # ``from pkg import mod`` imports the module pkg.mod when there is one, else a name of pkg
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
            for n in names:
                target = _resolve(n)
                if target is not None and target != mod:
                    edges.add(target)
        graph[mod] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    color, stack = {}, []

    def visit(m):
        color[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if color.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in color:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        color[m] = 2
        return None

    for m in sorted(graph):
        if m not in color:
            found = visit(m)
            if found:
                return found
    return None


def test_every_module_has_a_layer():
    assert sorted({_package(m) for m in MODULES} - set(LAYERS)) == []


def test_no_import_cycle():
    assert _cycle(import_graph()) is None


def test_imports_point_down_only():
    graph = import_graph()
    up = sorted(
        f"{m} -> {n}"
        for m, ns in graph.items()
        for n in ns
        if LAYERS.get(_package(n), 99) > LAYERS.get(_package(m), 99)
    )
    assert up == []


def test_no_library_module_imports_a_command():
    graph = import_graph()
    bad = sorted(
        f"{m} -> {n}" for m, ns in graph.items() if _package(m) not in COMMANDS for n in ns if _package(n) in COMMANDS
    )
    assert bad == []


def test_no_sys_path_edits_outside_conftest():
    bad = []
    paths = list(MODULES.values())
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, "tests")):
        paths += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py") and f != "conftest.py"]
    for path in paths:
        for node in ast.walk(ast.parse(open(path).read(), path)):
            # sys.path.insert/append/extend(...), sys.path = ..., sys.path[...] = ..., sys.path += ...
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                bad.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert bad == []


def test_the_checker_sees_function_level_imports():
    graph = import_graph()
    assert "rl.gapg" in graph and "rl.filtering" in graph and "train" in graph
    assert any(n.startswith("rl.") for n in graph["train"])


EVALUATION_FUNCTIONS = {
    "run_device",
    "run_cloud",
    "query_pass",
    "suite_rows",
    "evaluate_route",
    "evaluate_query",
    "evaluate_held_out",
    "evaluate_suites",
    "bootstrap_ci",
    "compare_rows",
    "apgr_cpt",
    "format_table",
    "train_router",
    "plot_learning_curve",
}


def test_evaluation_lives_in_one_package():
    """The evaluation (passes, protocol, metrics, tables, eval.py's suites, results, curves) is defined in
    ``evaluation/`` and nowhere else; no environment carries an evaluate method, and the rl/ layer only calls it."""
    where: dict[str, list[str]] = {}
    for mod, path in MODULES.items():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in EVALUATION_FUNCTIONS:
                where.setdefault(node.name, []).append(mod)
            if isinstance(node, ast.ClassDef) and _package(mod) == "envs":  # an environment evaluates nothing
                methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                assert not methods & {"evaluate", "evaluate_suites", "suite_base_model"}, (mod, node.name)
    outside = {name: mods for name, mods in where.items() if any(_package(m) != "evaluation" for m in mods)}
    assert outside == {}, f"evaluation code outside evaluation/: {outside}"
    assert EVALUATION_FUNCTIONS <= set(where), f"not found in evaluation/: {EVALUATION_FUNCTIONS - set(where)}"
    graph = import_graph()
    assert any(_package(d) == "evaluation" for d in graph["rl.trainer"]), "the trainer evaluates through evaluation/"
    assert all(_package(d) != "evaluation" for m, ds in graph.items() if _package(m) == "envs" for d in ds)


def test_serving_needs_no_training_code():
    """The served policy reads the run's config from settings/, not from rl/ (no edge serving -> rl)."""
    graph = import_graph()
    assert not [(m, d) for m, ds in graph.items() if _package(m) == "serving" for d in ds if _package(d) == "rl"]
