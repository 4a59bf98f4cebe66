"""Imports flow one way: no cycles among gptcore's modules, counting imports inside functions (lazy imports only hide
a cycle), and only train/distributed.py touches torch.distributed.

`import torch` itself imports torch.distributed, so "import gptcore does not import torch.distributed" is checked as
what gptcore controls: no gptcore module but train/distributed.py imports it, and `import gptcore` (which brings in
the Trainer) does not load train/distributed.py: training in one process never needs a process group.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gptcore"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules=frozenset()) -> set[str]:
    """Every module `path` imports, anywhere in the file, as absolute dotted names. 'from p import x' names p.x
    when that is one of `modules`, else p."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & set(modules)
            found.update(subs or {base})
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # importing a.b.c runs a/__init__ and a/b/__init__ first, but those edges are Python's, not cycles of ours:
    # an edge goes to the named module only
    return {name: {m for m in imports_of(path, modules) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: depth-first search, colouring nodes on the current path."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_parser_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "gptcore" / "train"
    pkg.mkdir(parents=True)
    f = pkg / "loop.py"
    f.write_text("from ..model import GPT\nfrom . import config\ndef f():\n    from ..hf import load\n    import numpy\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert imports_of(f, {"gptcore.train.config"}) == {"gptcore.model", "gptcore.train.config", "gptcore.hf", "numpy"}
    finally:
        ROOT = saved


def test_no_import_cycles_in_gptcore():
    edges = graph()
    assert "gptcore.model" in edges and "gptcore.train.loop" in edges  # the walk found the package
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_train_distributed_imports_torch_distributed():
    users = {name for name, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
             if any(m == "torch.distributed" or m.startswith("torch.distributed.") or m == "torch.nn.parallel"
                    for m in imports_of(path))}
    assert users == {"gptcore.train.distributed"}


def test_import_gptcore_leaves_out_distributed_and_the_recipe():
    code = ("import sys, gptcore; from gptcore import GPT, Trainer; "
            "print(sorted(m for m in sys.modules if m.startswith('gptcore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    loaded = eval(out)
    assert "gptcore.train.loop" in loaded
    assert "gptcore.train.distributed" not in loaded and "gptcore.train.recipe" not in loaded
