"""The shape of the code: modules import only from the floors below them, and the one
use of JAX internals is isolated and fails loudly here when JAX changes."""

import ast
import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

import seqjax

unroll_module = importlib.import_module("seqjax.unroll")  # seqjax.unroll is the function

ROOT = pathlib.Path(seqjax.__file__).parent


def _modules():
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name, path, modules):
    """Every seqjax module ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in modules and m != name}


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["seqjax.unroll"] >= {"seqjax._checks", "seqjax.cells"}  # the walker works
    assert "seqjax._checks" in graph["seqjax.cells._constructor"]
    assert _cycles(graph) == []


def test_the_floors():
    """The contract imports no seqjax module; the kernels do not import the unroll."""
    modules = _modules()
    assert _imports("seqjax.cells.contract", modules["seqjax.cells.contract"], modules) == set()
    for name in modules:
        if name.startswith("seqjax.kernels"):
            assert "seqjax.unroll" not in _imports(name, modules[name], modules), name


def test_vmapped_here_reads_jax_trace_state():
    """``unroll._vmapped_here`` is the only place that reads JAX's internal trace state.

    If JAX changes those internals it returns False everywhere (still correct, but
    ``jax.vmap(unroll)`` loses its one batched scan), so this fails loudly instead.
    """
    seen = []

    def probe(x, y):
        seen.append((unroll_module._vmapped_here((x,)), unroll_module._vmapped_here((y,))))
        return x

    x, y = jnp.ones(3), jnp.ones(())
    probe(x, y)
    jax.vmap(probe, in_axes=(0, None))(x, y)
    jax.jit(jax.vmap(probe, in_axes=(0, None)))(x, y)
    jax.vmap(jax.grad(lambda x, y: probe(x, y)), in_axes=(0, None))(x, y)
    assert seen == [(False, False), (True, False), (True, False), (False, False)]


@pytest.mark.parametrize("name", ["lstm", "min_gru", "mamba2"])
def test_vmap_of_unroll_runs_one_batched_scan(name):
    """What ``_vmapped_here`` buys: under ``jax.vmap`` the unroll is the batched scan of
    ``unroll_batch``, so its jaxpr has the same scans as ``unroll_batch``'s."""
    cell = getattr(seqjax, name)(8, **({"num_heads": 2} if name == "mamba2" else {}))
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jnp.ones((4, 5, 3))

    def count_scans(fn):
        text = str(jax.make_jaxpr(fn)(params, xs))
        return text.count("scan[")

    vmapped = count_scans(lambda p, x: jax.vmap(lambda e: seqjax.unroll(cell, p, e))(x))
    batched = count_scans(lambda p, x: seqjax.unroll_batch(cell, p, x))
    assert vmapped == batched
