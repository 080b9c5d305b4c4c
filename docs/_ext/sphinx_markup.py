"""A griffe extension: seqjax's docstrings, written in Sphinx-flavoured Google style,
rendered by mkdocstrings (Markdown).

The docstrings use a few reStructuredText constructs that Markdown does not know:

* roles -- ``:func:`~seqjax.unroll```, ``:class:``, ``:mod:``, ``:meth:``, ``:attr:``,
  ``:data:``, ``:obj:``, ``:exc:`` -- become code, linked to the API reference when the
  target is a seqjax object (an optional cross-reference: no warning when the target
  has no page of its own);
* ``:math:`x``` becomes ``$x$`` and a ``.. math::`` block becomes a ``$$ ... $$`` block
  (pymdownx.arithmatex, MathJax);
* a paragraph ending in ``::`` introduces a literal block: the ``::`` becomes ``:``
  and the indented block a fenced code block.

And one Google-style construct that griffe reads differently from what the docstrings
mean: with ``returns_named_value: false`` griffe takes the text before the first colon
of a ``Returns:`` (or ``Yields:``) section as the return *type*, and mkdocstrings shows
a type verbatim in a code cell, so ``A :class:`Seq2Seq` with params ...:`` showed the
raw ``<autoref ...>`` markup and RST's double backticks. seqjax's Returns sections are
one description, never ``type: description``, so a colon in their first line is
preceded by an empty type (a leading ``:``), which griffe reads as "no type given".

Loaded by mkdocstrings (``extensions:`` in ``mkdocs.yml``); not part of the package.
"""

from __future__ import annotations

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|py:\w+):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_RETURNS = re.compile(r"^(?P<indent> *)(?:Returns|Yields):\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _blocks(text: str) -> str:
    """``.. math::`` blocks and ``::`` literal blocks to Markdown."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        literal = stripped.endswith("::") and not stripped.startswith("..")
        math = stripped.startswith(".. math::")
        if not (literal or math):
            out.append(line)
            i += 1
            continue
        base = _indent(line)
        pad = " " * base
        block = []
        if math and stripped[len(".. math::"):].strip():
            block.append(stripped[len(".. math::"):].strip())
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        while block and not block[0].strip():
            block.pop(0)
        body = textwrap.dedent("\n".join(block)).split("\n") if block else []
        if math:
            if any("&" in b or "\\\\" in b for b in body):  # Sphinx aligns these itself
                body = ["\\begin{aligned}"] + body + ["\\end{aligned}"]
            out += [pad + "$$"] + [pad + b for b in body] + [pad + "$$", ""]
        else:
            head = line.rstrip()[:-2].rstrip()
            if head.strip():
                out.append(head + ":")
            if body:
                out += ["", pad + "```python"] + [pad + b if b else "" for b in body] + [
                    pad + "```", ""]
        i = j
    return "\n".join(out)


def _untyped_returns(text: str) -> str:
    """A ``Returns:``/``Yields:`` section's first line with a colon gets a leading ``:``,
    an empty type, so that griffe keeps the whole line as the description."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        header = _RETURNS.match(line)
        if not header:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or _indent(lines[j]) <= len(header["indent"]):
            continue
        first = lines[j]
        if ":" in first and not first.lstrip().startswith(":"):
            lines[j] = " " * _indent(first) + ":" + first.lstrip()
    return "\n".join(lines)


class SphinxMarkup(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded (see the module)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._convert(obj, obj.docstring.value)

    def _convert(self, obj, text: str) -> str:
        text = _blocks(text)
        text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
        text = _ROLE.sub(lambda m: self._ref(obj, m.group(1) == "~", m.group(2)), text)
        return _untyped_returns(text)

    @staticmethod
    def _ref(obj, short: bool, target: str) -> str:
        target = target.strip().rstrip("()")
        shown = target.rsplit(".", 1)[-1] if short else target
        path = None
        if target.split(".")[0] == "seqjax":
            path = target
        else:
            scope = obj if obj.is_module or obj.is_class else obj.parent
            try:
                path = scope.resolve(target)
            except Exception:  # not a seqjax name: plain code
                path = None
        if not path or not path.startswith("seqjax"):
            return f"`{shown}`"
        return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member)
