"""A MkDocs hook: everything the API reference documents has a docstring.

mkdocstrings renders a public function, class, method or property without a docstring as a bare
signature (or leaves it out), silently. This hook finds every ``::: identifier`` in the pages, loads
the object with griffe as mkdocstrings does, and warns for the object and each public member it
renders (names not starting with ``_``, declared in the class or module itself, and the ``members:``
option's names where a page lists them) that lacks a docstring; ``mkdocs build --strict`` (which
``make test`` runs) turns the warning into a failure. Attributes (data class fields, settings) are
not required to have one: their class documents them.
"""

from __future__ import annotations

import re
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import griffe
import yaml
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("require_docstrings")

# "::: identifier" and the indented YAML options block after it.
DIRECTIVE = re.compile(r"^::: ?(?P<identifier>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+\S.*\n|[ \t]*\n)*)", re.M)
NEEDS_DOCSTRING = (griffe.Kind.MODULE, griffe.Kind.CLASS, griffe.Kind.FUNCTION)


@cache
def _package(name: str, root: str) -> griffe.Module:
    return griffe.load(name, search_paths=[root], resolve_aliases=True, resolve_external=False)


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if obj.is_alias else obj


def _needs_docstring(obj: griffe.Object) -> bool:
    return obj.kind in NEEDS_DOCSTRING or "property" in obj.labels


def _members(obj: griffe.Object, names: list[str] | None) -> list[griffe.Object]:
    """The members mkdocstrings renders for ``obj``: those named, else the public ones defined there."""
    if names is not None:
        return [_target(obj.members[name]) for name in names if name in obj.members]
    return [member for name, member in obj.members.items() if not name.startswith("_") and not member.is_alias]


def _undocumented(obj: griffe.Object, names: list[str] | None = None) -> list[str]:
    found = [obj.path] if _needs_docstring(obj) and not (obj.docstring and obj.docstring.value.strip()) else []
    if obj.kind in (griffe.Kind.MODULE, griffe.Kind.CLASS) and names != []:
        for member in _members(obj, names):
            found += _undocumented(member)
    return found


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """Loads the package afresh on each build (``mkdocs serve`` rebuilds as the code changes)."""
    _package.cache_clear()


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    """Warns for each undocumented object the page's ``:::`` blocks render."""
    root = str(Path(config.config_file_path).parent)
    for directive in DIRECTIVE.finditer(markdown):
        identifier = directive["identifier"]
        options = (yaml.safe_load(textwrap.dedent(directive["options"])) or {}).get("options", {})
        members = options.get("members")
        package, _, rest = identifier.partition(".")
        try:
            obj = _package(package, root)
            obj = _target(obj[rest] if rest else obj)
        except (KeyError, griffe.AliasResolutionError, ImportError) as error:
            log.warning(f"{page.file.src_uri}: ::: {identifier} names nothing griffe can find ({error!r})")
            continue
        for path in _undocumented(obj, [] if members is False else members if isinstance(members, list) else None):
            log.warning(f"{page.file.src_uri}: {path} has no docstring; the API reference ({identifier}) renders it")
    return markdown
