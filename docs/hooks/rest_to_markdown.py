"""A griffe extension for the API reference: the package's docstrings are written for reading in
the source (reST roles, ``Example::`` blocks, doctests); this turns each into its Markdown equivalent
so that mkdocstrings renders them as code rather than as stray punctuation and nested quotes.

- ``:class:`~a.b.C``` (and ``:meth:``, ``:func:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``) → `` `C` ``;
- ``Example::`` or ``.. code-block:: yaml`` followed by an indented block → a fenced block;
- a run of doctest lines (``>>>``, ``...`` and the output after them) → a ``pycon`` fenced block,
  without their ``# doctest:`` flags.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`(~?)([^`]+)`")
DOCTEST_FLAG = re.compile(r"\s*# doctest: [+-]\w+")
DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. code-block::\s*(?P<lang>\w+)\s*$")


def _role(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rest_to_markdown(text: str) -> str:
    """``text`` (a docstring) with its reST roles, literal blocks and doctests as Markdown."""
    lines = ROLE.sub(_role, text).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE.match(line)
        if directive or (line.rstrip().endswith("::") and not line.lstrip().startswith(">>>")):
            lang = directive.group("lang") if directive else "python"
            if not directive:
                head = line.rstrip()[:-1]  # "Example::" → "Example:"
                out.append(head if head.strip() != ":" else "")
            base = _indent(line)
            block: list[str] = []
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            if block:
                out += ["", " " * base + f"```{lang}", *textwrap.indent(textwrap.dedent("\n".join(block)), " " * base).splitlines()]
                out += [" " * base + "```", ""]
                i = j
                continue
            i += 1
            continue
        if line.lstrip().startswith(">>>"):
            base = _indent(line)
            block = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= base:
                block.append(DOCTEST_FLAG.sub("", lines[i][base:]))
                i += 1
            out += [" " * base + "```pycon", *(" " * base + item for item in block), " " * base + "```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RestToMarkdown(griffe.Extension):
    """Rewrites every docstring griffe loads (see the module's docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrites ``obj``'s docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)
