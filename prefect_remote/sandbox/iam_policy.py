"""IAM's identity-policy evaluation, for the sandbox AWS: does a set of policies allow one action on
one resource in one request context? Pure logic, no AWS.

It follows IAM's documented rules ("Policy evaluation logic", "Condition operators"): an explicit
``Deny`` wins over any ``Allow``; without an ``Allow`` the answer is an implicit deny. Actions match
without regard to case, with ``*`` and ``?``; ``NotAction`` and ``NotResource`` match what they do not
name. Condition keys are case-insensitive, values case-sensitive (but for the ``…IgnoreCase``
operators); the operators of a block, the keys of an operator, must all hold, and one of a key's
values is enough (none, for the negated operators). A key missing from the request context fails
its condition, except for the negated operators, ``…IfExists``, ``Null: true`` and
``ForAllValues:``. Policy variables (``${aws:username}``) are replaced from the context.

An operator this module does not know raises :class:`PolicyError`: a policy it cannot read is
never read as allowing anything.

>>> policy = {"Statement": [{"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "arn:aws:ssm:*:*:parameter/app/*"}]}
>>> evaluate([("p", policy)], Check("ssm:getparameter", "arn:aws:ssm:us-east-1:123456789012:parameter/app/x")).decision
'allowed'
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Decision = Literal["allowed", "explicitDeny", "implicitDeny"]
Context = Mapping[str, Sequence[str]]  # lowercased condition key -> its values (one for single-valued keys)


class PolicyError(ValueError):
    """A policy this evaluator cannot read (an unknown condition operator, a malformed statement)."""


@dataclass(frozen=True)
class Check:
    """One authorization IAM makes: ``action`` (``service:Name``) on ``resource`` (an ARN or ``*``)
    in ``context`` (condition keys to values; keys in any case)."""

    action: str
    resource: str
    context: Mapping[str, Sequence[str] | str] = field(default_factory=dict)

    def normalized_context(self) -> dict[str, list[str]]:
        return {key.lower(): [value] if isinstance(value, str) else list(value) for key, value in self.context.items()}


@dataclass(frozen=True)
class Matched:
    """A statement that decided: the policy's id and the statement's index and Sid."""

    policy: str
    index: int
    sid: str | None
    effect: str


@dataclass(frozen=True)
class Evaluation:
    decision: Decision
    matched: tuple[Matched, ...] = ()  # the Deny statements that matched, else the Allow ones
    missing: tuple[str, ...] = ()  # condition keys statements about this action asked for that the context lacked

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"


def evaluate(policies: Iterable[tuple[str, Mapping[str, Any]]], check: Check) -> Evaluation:
    """The decision of identity ``policies`` (``(id, document)`` pairs) on ``check``."""
    context = check.normalized_context()
    allows: list[Matched] = []
    denies: list[Matched] = []
    missing: set[str] = set()
    for policy_id, document in policies:
        for index, statement in enumerate(statements(document)):
            effect = statement.get("Effect")
            if effect not in ("Allow", "Deny"):
                raise PolicyError(f"policy {policy_id}: statement {index} has Effect {effect!r} (Allow or Deny)")
            if not _applies(statement, "Action", check.action, action_matches):
                continue
            if not _applies(statement, "Resource", check.resource, functools.partial(_resource_matches, context=context)):
                continue
            met, absent = conditions_met(statement.get("Condition") or {}, context)
            missing |= absent
            if met:
                (denies if effect == "Deny" else allows).append(Matched(policy_id, index, statement.get("Sid"), effect))
    if denies:
        return Evaluation("explicitDeny", tuple(denies), tuple(sorted(missing)))
    if allows:
        return Evaluation("allowed", tuple(allows), tuple(sorted(missing)))
    return Evaluation("implicitDeny", (), tuple(sorted(missing)))


def statements(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = document.get("Statement", [])
    return [found] if isinstance(found, Mapping) else list(found)


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _applies(statement: Mapping[str, Any], element: str, value: str, matches: Any) -> bool:
    """``Action``/``NotAction`` (or ``Resource``/``NotResource``) of ``statement`` covers ``value``."""
    if element in statement and f"Not{element}" in statement:
        raise PolicyError(f"a statement has both {element} and Not{element}")
    if element in statement:
        return any(matches(pattern, value) for pattern in _listed(statement[element]))
    if f"Not{element}" in statement:
        return not any(matches(pattern, value) for pattern in _listed(statement[f"Not{element}"]))
    raise PolicyError(f"a statement has neither {element} nor Not{element}")


# Marks the next character (a ``*`` or ``?``) as literal: a policy variable's value, or ``${*}``.
_LITERAL = "\x00"


@functools.lru_cache(maxsize=4096)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM's wildcards: ``*`` any run of characters (``/`` and ``:`` too), ``?`` one character; a
    wildcard that a policy variable brought in (:func:`substitute`) is a plain character."""
    body, literal = [], False
    for char in pattern:
        if char == _LITERAL:
            literal = True
            continue
        body.append(re.escape(char) if literal or char not in "*?" else ".*" if char == "*" else ".")
        literal = False
    return re.compile("".join(body), re.S | (re.I if ignore_case else 0))


def like(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return _wildcard(pattern, ignore_case).fullmatch(value) is not None


def action_matches(pattern: str, action: str) -> bool:
    """``ec2:Describe*`` covers ``ec2:describeinstances``: IAM's action names know no case."""
    return like(pattern, action, ignore_case=True)


def _resource_matches(pattern: str, resource: str, context: Context) -> bool:
    if pattern == "*":
        return True
    if resource == "*":  # an action on no particular resource is covered by "*" only
        return False
    pattern = substitute(pattern, context)
    return pattern is not None and arn_like(pattern, resource)


def arn_like(pattern: str, arn: str) -> bool:
    """ArnLike: the six parts of an ARN compared one by one (the last, the resource, takes the rest)."""
    want, have = pattern.split(":", 5), arn.split(":", 5)
    if len(want) != 6 or len(have) != 6:
        return like(pattern, arn)
    return all(like(part, value) for part, value in zip(want, have, strict=True))


_VARIABLE = re.compile(r"\$\{([^}]+)\}")
_SPECIAL = {"*", "?", "$"}


def substitute(text: str, context: Context) -> str | None:
    """``text`` with its policy variables (``${aws:username}``) replaced from ``context``; ``None``
    when one names a key the request lacks (the element then matches nothing).

    What a variable brings in is literal, as in IAM: a ``*`` or ``?`` in a tag's value, or ``${*}``
    itself, matches only that character (:func:`literal` reads the text back without the marks).

    >>> pattern = substitute("prefect-remote-${aws:PrincipalTag/pool}-*", {"aws:principaltag/pool": ["*"]})
    >>> like(pattern, "prefect-remote-*-run"), like(pattern, "prefect-remote-other-run")
    (True, False)
    >>> home = substitute("arn:aws:s3:::b/home/${aws:username}/*", {"aws:username": ["a*"]})
    >>> arn_like(home, "arn:aws:s3:::b/home/a*/x"), arn_like(home, "arn:aws:s3:::b/home/ada/x")
    (True, False)
    >>> own = substitute("${ec2:SourceInstanceARN}", {"ec2:sourceinstancearn": ["arn:aws:ec2:r:1:instance/i-*"]})
    >>> arn_like(own, "arn:aws:ec2:r:1:instance/i-*"), arn_like(own, "arn:aws:ec2:r:1:instance/i-0abc")
    (True, False)
    >>> substitute("user/${aws:username}", {}) is None  # a key the request lacks: matches nothing
    True
    """
    if "${" not in text:
        return text
    lost = False

    def value(match: re.Match[str]) -> str:
        nonlocal lost
        name = match.group(1)
        if name in _SPECIAL:
            return _marked(name)
        key, _, default = name.partition(",")
        values = context.get(key.strip().lower())
        if values:
            return _marked(values[0])
        if default:  # ${aws:username, 'nobody'}
            return _marked(default.strip().strip("'"))
        lost = True
        return ""

    result = _VARIABLE.sub(value, text)
    return None if lost else result


def _marked(value: str) -> str:
    return re.sub(r"([*?])", _LITERAL + r"\1", value)


def literal(text: str) -> str:
    """``text`` as written, without :func:`substitute`'s marks (for the operators that take no wildcards)."""
    return text.replace(_LITERAL, "")


# -- conditions ------------------------------------------------------------------------------------
def _string_equals(want: str, have: str) -> bool:
    return want == have


def _string_ignore_case(want: str, have: str) -> bool:
    return want.lower() == have.lower()


def _numeric(compare: Any) -> Any:
    def match(want: str, have: str) -> bool:
        try:
            return compare(float(have), float(want))
        except ValueError:
            return False

    return match


def _date(compare: Any) -> Any:
    def instant(text: str) -> float:
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return float(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    def match(want: str, have: str) -> bool:
        try:
            return compare(instant(have), instant(want))
        except ValueError:
            return False

    return match


def _bool(want: str, have: str) -> bool:
    return want.lower() == have.lower()


def _ip_address(want: str, have: str) -> bool:
    try:
        return ipaddress.ip_address(have) in ipaddress.ip_network(want, strict=False)
    except ValueError:
        return False


# operator -> (how one policy value matches one request value, negated)
OPERATORS: dict[str, tuple[Any, bool]] = {
    "StringEquals": (_string_equals, False),
    "StringNotEquals": (_string_equals, True),
    "StringEqualsIgnoreCase": (_string_ignore_case, False),
    "StringNotEqualsIgnoreCase": (_string_ignore_case, True),
    "StringLike": (like, False),
    "StringNotLike": (like, True),
    "ArnEquals": (arn_like, False),  # ArnEquals takes wildcards as ArnLike does
    "ArnLike": (arn_like, False),
    "ArnNotEquals": (arn_like, True),
    "ArnNotLike": (arn_like, True),
    "NumericEquals": (_numeric(lambda have, want: have == want), False),
    "NumericNotEquals": (_numeric(lambda have, want: have == want), True),
    "NumericLessThan": (_numeric(lambda have, want: have < want), False),
    "NumericLessThanEquals": (_numeric(lambda have, want: have <= want), False),
    "NumericGreaterThan": (_numeric(lambda have, want: have > want), False),
    "NumericGreaterThanEquals": (_numeric(lambda have, want: have >= want), False),
    "DateEquals": (_date(lambda have, want: have == want), False),
    "DateNotEquals": (_date(lambda have, want: have == want), True),
    "DateLessThan": (_date(lambda have, want: have < want), False),
    "DateLessThanEquals": (_date(lambda have, want: have <= want), False),
    "DateGreaterThan": (_date(lambda have, want: have > want), False),
    "DateGreaterThanEquals": (_date(lambda have, want: have >= want), False),
    "Bool": (_bool, False),
    "IpAddress": (_ip_address, False),
    "NotIpAddress": (_ip_address, True),
}


def conditions_met(block: Mapping[str, Any], context: Context) -> tuple[bool, set[str]]:
    """Whether a statement's ``Condition`` block holds in ``context``, and the keys it named that
    ``context`` lacks."""
    missing: set[str] = set()
    met = True
    for operator, keys in block.items():
        if not isinstance(keys, Mapping):
            raise PolicyError(f"condition operator {operator} needs an object of keys to values")
        for key, wanted in keys.items():
            values = context.get(key.lower())
            if values is None:
                missing.add(key)
            if not condition_holds(
                operator, key, _listed(wanted) if not isinstance(wanted, bool) else [str(wanted).lower()], values, context
            ):
                met = False
    return met, missing


def condition_holds(operator: str, key: str, wanted: list[str], values: Sequence[str] | None, context: Context) -> bool:
    """One ``operator: {key: wanted}`` pair, with ``values`` the request's values of ``key`` (``None``: absent)."""
    qualifier, _, name = operator.rpartition(":")
    if qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise PolicyError(f"condition operator {operator}: the set qualifiers are ForAllValues: and ForAnyValue:")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    if name == "Null":
        if qualifier or if_exists:
            raise PolicyError(f"condition operator {operator} is not one IAM has")
        absent = values is None or len(values) == 0
        return any(absent == (want.lower() == "true") for want in wanted)
    if name not in OPERATORS:
        raise PolicyError(f"condition operator {operator} is not one the sandbox's IAM evaluator knows")
    match, negated = OPERATORS[name]
    wanted = [resolved for want in wanted if (resolved := substitute(want, context)) is not None]
    if match not in (like, arn_like):  # only the *Like (and Arn) operators know wildcards
        wanted = [literal(want) for want in wanted]
    if qualifier == "ForAllValues":
        if not values:
            return True  # vacuously: no value to disagree (IAM's documented behaviour)
        return all(_value_matches(match, negated, wanted, value) for value in values)
    if qualifier == "ForAnyValue":
        if not values:
            return False
        return any(_value_matches(match, negated, wanted, value) for value in values)
    if values is None:
        return if_exists or negated
    return any(_value_matches(match, negated, wanted, value) for value in values)


def _value_matches(match: Any, negated: bool, wanted: Sequence[str], value: str) -> bool:
    found = any(match(want, value) for want in wanted)
    return not found if negated else found


__all__ = ["Check", "Decision", "Evaluation", "Matched", "PolicyError", "action_matches", "arn_like", "evaluate", "like"]
