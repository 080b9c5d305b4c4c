"""The documentation cannot rot: every Python block of the README and of the docs site
runs, and every command they show parses.

* Each page's ```` ```python ```` blocks run in order in one namespace (a page reads
  like a notebook), in a scratch directory. A block whose first line is a comment
  starting ``# not run by the tests:`` is skipped; the comment, which the reader sees
  too, says why (it needs a GPU, or takes minutes). A page whose blocks import an
  optional package that is not installed (torch, flax, matplotlib, ...) is skipped
  from that block on, naming the extra.
* Each ``seqjax ...`` and ``python -m examples....`` line of a ```` ```bash ```` block
  is given to that command's own argument parser (nothing runs), so a renamed or
  removed option fails here.
* The result files under ``docs/bench`` and ``docs/science`` are quoted, not
  executed: they are written by ``seqjax bench`` and ``seqjax gradnorm``.
* The site builds (``mkdocs build --strict``, about 10 s) and its HTML shows no
  markup meant for a converter: no literal ``<autoref ...>`` and no RST double
  backticks.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pathlib
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ("bench", "science")
SKIP = "# not run by the tests:"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                   re.M | re.S)
OPTIONAL = {"torch": "torch", "flax": "flax", "matplotlib": "plots", "tqdm": "plots",
            "sklearn": "examples", "statsmodels": "examples", "equinox": "peers",
            "haiku": "peers"}


def pages():
    found = [ROOT / "README.md"]
    for path in sorted((ROOT / "docs").rglob("*.md")):
        if path.relative_to(ROOT / "docs").parts[0] not in RESULTS:
            found.append(path)
    return found


def blocks(path, lang):
    return [(m["body"], m.start()) for m in FENCE.finditer(path.read_text())
            if m["lang"] == lang]


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


PAGES = pages()


def test_every_page_is_found_and_the_marker_is_rare():
    """The collection itself: the guides are there, and skipped blocks stay few."""
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/getting-started.md",
            "docs/guides/cells.md", "docs/guides/unroll.md"} <= names
    python = [b for p in PAGES for b, _ in blocks(p, "python")]
    skipped = [b for b in python if b.lstrip().startswith(SKIP)]
    assert len(python) >= 20
    assert len(skipped) <= 6, "a skipped block must stay the exception"
    for block in skipped:  # the reason is stated
        assert len(block.lstrip().splitlines()[0]) > len(SKIP) + 10


def _missing_extra(code):
    for module in re.findall(r"^\s*(?:import|from)\s+([\w.]+)", code, re.M):
        top = module.split(".")[0]
        if module.startswith("seqjax.flax"):
            top = "flax"
        elif module.startswith("seqjax.interop.torch"):
            top = "torch"
        if top in OPTIONAL and importlib.util.find_spec(top) is None:
            return f"{top} (the {OPTIONAL[top]} extra)"
    return None


@pytest.mark.parametrize("path", [p for p in PAGES if blocks(p, "python")],
                         ids=_ids([p for p in PAGES if blocks(p, "python")]))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{path.stem}"}
    text = path.read_text()
    for code, offset in blocks(path, "python"):
        if code.lstrip().startswith(SKIP):
            continue
        missing = _missing_extra(code)
        if missing:
            pytest.skip(f"needs {missing}, which is not installed")
        line = text.count("\n", 0, offset) + 2
        try:
            exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the block at {path.relative_to(ROOT)} line {line} "
                                 f"failed: {type(error).__name__}: {error}") from error


class _Parsed(Exception):
    pass


def _commands(path):
    """``(line, argv)`` of every seqjax / examples command in the page's bash blocks."""
    out = []
    for code, _ in blocks(path, "bash"):
        for raw in code.splitlines():
            line = raw.split(" #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if not words:
                    continue
                head = words[0].rsplit("/", 1)[-1]
                if head == "seqjax":
                    out.append((raw.strip(), ["seqjax"] + words[1:]))
                elif head.startswith("python") and words[1:3] == ["-m", words[2]] \
                        and words[2].startswith("examples."):
                    out.append((raw.strip(), [words[2]] + words[3:]))
    return out


COMMANDS = [(p, line, argv) for p in PAGES for line, argv in _commands(p)]


def test_the_commands_are_there():
    assert any(argv[:2] == ["seqjax", "bench"] for _, _, argv in COMMANDS)
    assert any(argv[0].startswith("examples.") for _, _, argv in COMMANDS)


@pytest.mark.parametrize("path,line,argv", COMMANDS,
                         ids=[f"{p.relative_to(ROOT)}: {line[:60]}" for p, line, _ in COMMANDS])
def test_commands_parse(path, line, argv, monkeypatch):
    """The command line is accepted by its parser; nothing runs."""
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    if argv[0] == "seqjax":
        from seqjax import _extras, cli

        if argv[1:2] in (["--version"], ["--help"], []):
            return
        missing = _extras.missing(*cli.NEEDS)
        if missing:
            pytest.skip(f"seqjax {argv[1]} needs {', '.join(missing)}")
        main, args = cli.main, argv[1:]
    else:
        if _missing_extra(f"import {argv[0]}") or importlib.util.find_spec("sklearn") is None:
            pytest.skip("the examples need the examples extra")
        main, args = importlib.import_module(argv[0]).main, argv[1:]
    with pytest.raises(_Parsed):
        main(args)


# Markup meant for a converter that reached the HTML as text: the autorefs tag that
# docs/_ext/sphinx_markup.py writes for a role, with its attributes (prose may name the
# tag), shown literally (escaped); and RST's double backticks (exactly two: a Markdown
# fence shown as code has three). Code blocks (<pre>) may contain anything.
RAW_MARKUP = {"a literal <autoref> tag": re.compile(r"&lt;autoref identifier="),
              "RST double backticks": re.compile(r"(?<!`)``(?!`)")}


def test_sphinx_markup_keeps_returns_untyped():
    """A Returns section's first line with a colon keeps its text as the description:
    griffe would take what precedes the colon as the return type."""
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("_sphinx_markup",
                                                  ROOT / "docs/_ext/sphinx_markup.py")
    markup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(markup)
    text = "Runs.\n\nReturns:\n  A ``Model`` with params:\n\n  * ``apply``: one step.\n"
    assert markup._untyped_returns(text).split("\n")[3] == "  :A ``Model`` with params:"
    plain = "Runs.\n\nReturns:\n  ``[T, H]`` outputs.\n\nRaises:\n  ValueError: bad.\n"
    assert markup._untyped_returns(plain) == plain


def test_the_site_builds_without_raw_markup(tmp_path):
    """``mkdocs build --strict`` into a scratch directory, then every HTML page outside
    its code blocks."""
    for module in ("mkdocs", "mkdocstrings", "material"):
        pytest.importorskip(module, reason="the docs extra")
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
         str(site)], cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    pages = sorted(site.rglob("*.html"))
    assert any(p.relative_to(site).parts[0] == "api" for p in pages)
    found = []
    for page in pages:
        html = re.sub(r"<pre\b.*?</pre>", "", page.read_text(encoding="utf-8"), flags=re.S)
        for what, pattern in RAW_MARKUP.items():
            for m in pattern.finditer(html):
                found.append(f"{page.relative_to(site)}: {what}: "
                             f"...{html[max(0, m.start() - 80):m.end() + 80]!r}...")
    assert not found, f"{len(found)} places, e.g.:\n" + "\n".join(found[:10])
