"""The list filters Google's APIs take (AIP-160, and Cloud Logging's query language, its superset),
as far as the sandbox's fakes need them: comparisons joined by ``AND`` / ``OR`` / ``NOT`` (a space is
an AND), parentheses, quoted or bare values, quoted field path segments (``labels."k"``).

Operators: ``=`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` and ``:`` (has: a substring of a string, a key of
a map; ``:*`` is presence). A field's value compares as the fake's ``resolve`` gives it: a float
(an epoch) compares with an RFC 3339 literal as a time, an int with a number, anything else as text.

>>> match = compile_filter('labels."team"="data" AND timestamp>="2026-01-01T00:00:00Z"')
>>> match(lambda path: {("labels", "team"): "data", ("timestamp",): 1.8e9}.get(tuple(path)))
True
>>> compile_filter("labels.launch:*")(lambda path: None)
False
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from typing import Any

from prefect_remote.sandbox.gcp.api import GoogleError

Resolve = Callable[[Sequence[str]], Any]  # a field path -> its value in one resource (None: absent)
Match = Callable[[Resolve], bool]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<paren>[()])
    | (?P<op>>=|<=|!=|=|<|>|:)
    | (?P<quoted>"(?:[^"\\]|\\.)*")
    | (?P<dot>\.)
    | (?P<word>[^\s()=<>!:."]+)
    )""",
    re.VERBOSE,
)


def compile_filter(text: str | None) -> Match:
    """A predicate for ``text`` (an empty filter matches everything); a filter it cannot read is
    refused with 400, as Google refuses one."""
    if not text or not text.strip():
        return lambda resolve: True
    tokens = _tokenize(text)
    parser = _Parser(tokens, text)
    match = parser.expression()
    if parser.position != len(tokens):
        raise GoogleError(400, f"Invalid filter {text!r}: unexpected {tokens[parser.position][1]!r}")
    return match


def parse_time(text: str) -> float | None:
    """An RFC 3339 timestamp (``2026-12-01T10:00:00.123Z``, ``…+00:00``) as an epoch, or None."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip())  # nanoseconds, as Google prints some: to micro
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        found = _TOKEN.match(text, position)
        if found is None or found.end() == position:
            raise GoogleError(400, f"Invalid filter {text!r}: cannot read it at {text[position:]!r}")
        kind = found.lastgroup or ""
        value = found.group(kind)
        if kind == "quoted":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
        position = found.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens, self.text, self.position = tokens, text, 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise GoogleError(400, f"Invalid filter {self.text!r}: it ends too early")
        self.position += 1
        return token

    def expression(self) -> Match:  # or-terms
        terms = [self.conjunction()]
        while self.peek() == ("word", "OR"):
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else (lambda resolve: any(term(resolve) for term in terms))

    def conjunction(self) -> Match:
        terms = [self.negation()]
        while (token := self.peek()) is not None and token != ("paren", ")") and token != ("word", "OR"):
            if token == ("word", "AND"):
                self.take()
            terms.append(self.negation())
        return terms[0] if len(terms) == 1 else (lambda resolve: all(term(resolve) for term in terms))

    def negation(self) -> Match:
        if self.peek() in (("word", "NOT"), ("op", "-")):
            self.take()
            inner = self.negation()
            return lambda resolve: not inner(resolve)
        if self.peek() == ("paren", "("):
            self.take()
            inner = self.expression()
            if self.take() != ("paren", ")"):
                raise GoogleError(400, f"Invalid filter {self.text!r}: a '(' is not closed")
            return inner
        return self.comparison()

    def comparison(self) -> Match:
        path = [self.segment()]
        while self.peek() == ("dot", "."):
            self.take()
            path.append(self.segment())
        kind, op = self.take()
        if kind != "op":
            raise GoogleError(400, f"Invalid filter {self.text!r}: expected an operator after {'.'.join(path)}, got {op!r}")
        kind, literal = self.take()
        if kind not in ("word", "quoted"):
            raise GoogleError(400, f"Invalid filter {self.text!r}: expected a value after {'.'.join(path)}{op}")
        while kind == "word" and self.peek() is not None and self.peek()[0] in ("dot", "op") and self.peek() != ("op", "="):  # type: ignore[index]
            literal += self.take()[1]  # a bare value with dots or colons (a time, a name)
            if self.peek() is not None and self.peek()[0] == "word":  # type: ignore[index]
                literal += self.take()[1]
        return lambda resolve: _compare(resolve(path), op, literal)

    def segment(self) -> str:
        kind, value = self.take()
        if kind not in ("word", "quoted"):
            raise GoogleError(400, f"Invalid filter {self.text!r}: expected a field name, got {value!r}")
        return value


def _compare(value: Any, op: str, literal: str) -> bool:
    if op == ":":
        if literal == "*":
            return value is not None
        if isinstance(value, dict):
            return literal in value
        return value is not None and literal.lower() in str(value).lower()
    if value is None:
        return op == "!="
    if isinstance(value, float):
        when = parse_time(literal)
        if when is None:
            raise GoogleError(400, f"Invalid filter: {literal!r} is not a timestamp (RFC 3339, e.g. 2026-12-01T10:00:00Z)")
        left, right = value, when
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            left, right = value, int(literal)
        except ValueError:
            raise GoogleError(400, f"Invalid filter: {literal!r} is not a number") from None
    else:
        left, right = str(value), literal  # type: ignore[assignment]
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]
