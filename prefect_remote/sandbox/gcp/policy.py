"""The sandbox GCP's IAM: whether a principal holds a permission on a resource, decided as Google's
allow policies decide it. Pure logic on a clock the caller gives; :mod:`.enforcement` puts it in front
of the fake APIs.

- **Policies** (:class:`PolicyStore`) are kept by key: the project's (``project``), a service
  account's (``serviceAccount:<email>``), a bucket's (``bucket:<name>``), a secret's
  (``secret:<id>``), and the custom roles (``role:<id>``). Every change is recorded with its time,
  and a check sees the policies **as they were** ``delay`` seconds ago: a binding added (or removed)
  takes effect after the delay, as Google's do (typically 2 minutes, "potentially 7 minutes or
  longer": IAM's *access change propagation*). A custom role's changes propagate the same way.
- **A principal is allowed** a permission on a resource when a binding of a policy that applies
  (the resource's own, then its ancestors': bucket → project) names the principal (or
  ``allUsers``/``allAuthenticatedUsers``, or a bucket's ``projectOwner:``-style convenience member),
  its role contains the permission, and its condition holds. Predefined roles carry their real
  permission lists (``roles/*.json`` beside this module, see ``roles/SOURCE.md``), loaded the first
  time a binding naming them is evaluated for its member; a custom role is the project's own
  (``projects/P/roles/R``: deleted or ``DISABLED`` ones grant nothing); a predefined role the
  sandbox has no copy of grants nothing. Deny policies are not modeled (prefect-remote uses none).
- **Conditions** are CEL in IAM's profile of it (only the functions of IAM's attribute reference,
  :data:`IAM_FUNCTIONS`: a policy calling CEL's others, ``matches()``, ``contains()``, ``size()``, macros…,
  is refused when set, as Google refuses it), evaluated by cel-python: ``resource.service``, ``resource.type`` and
  ``resource.name`` exist only where Google provides them (:class:`Resource`), so, as Google's
  attribute reference says, "if part of a condition uses an attribute that isn't available for a
  resource, then that part of the condition is never interpreted as granting access" (CEL's error
  value, which ``||`` may still absorb); ``request.time``; and the tag functions
  ``resource.matchTag``, ``matchTagId``, ``hasTagKey``, ``hasTagKeyId`` over tags attached with
  :meth:`PolicyStore.attach_tag` (inherited from the project). A condition that fails to evaluate
  grants nothing.

>>> store = PolicyStore(clock=lambda: 100.0, delay=0)
>>> machine = "serviceAccount:m@p.iam.gserviceaccount.com"
>>> store.set_policy("project", {"bindings": [{"role": "roles/logging.logWriter", "members": [machine]}]})
>>> iam = Evaluator(store, project="p", project_number="42")
>>> iam.allows(machine, "logging.logEntries.create", Resource("projects/p", ("project",)))
True
"""

from __future__ import annotations

import bisect
import copy
import datetime
import functools
import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROLES = Path(__file__).parent / "roles"  # predefined roles' permission lists (roles/SOURCE.md)
ANONYMOUS = "allUsers"  # the principal of a request with no credentials
# A bucket's convenience members name the project's basic roles.
CONVENIENCE = {"projectOwner": "roles/owner", "projectEditor": "roles/editor", "projectViewer": "roles/viewer"}
_CUSTOM_ROLE = re.compile(r"projects/([^/]+)/roles/([^/]+)")


@functools.cache
def predefined_role(name: str) -> frozenset[str] | None:
    """The permissions of predefined role ``name`` (``roles/run.developer``), or None when the
    sandbox has no copy of it (``roles/<name>.json`` beside this module)."""
    if not name.startswith("roles/") or "/" in name.removeprefix("roles/"):
        return None
    found = ROLES / (name.removeprefix("roles/") + ".json")
    if not found.is_file():
        return None
    return frozenset(json.loads(found.read_text())["includedPermissions"])


@dataclass(frozen=True)
class Resource:
    """What a permission is checked on.

    ``name`` is the resource as Google's messages print it; ``policies`` the keys of the allow
    policies that apply to it, its own (where it can have one) first, then its ancestors';
    ``attributes`` the condition attributes Google provides for it (``service``, ``type``,
    ``name``: only where its attribute reference lists the resource type)."""

    name: str
    policies: tuple[str, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)


class PolicyStore:
    """Allow policies and custom roles by key, each with the history of its changes; tags.

    ``clock`` is the time in epoch seconds (``time.time``, or a test's fake); ``delay`` how long a
    change takes to become effective."""

    def __init__(self, clock: Callable[[], float], delay: float) -> None:
        if delay < 0:
            raise ValueError(f"IAM propagation delay {delay!r}: give seconds >= 0")
        self.clock, self.delay = clock, delay
        self._lock = threading.Lock()
        self._history: dict[str, tuple[list[float], list[Any]]] = {}  # key -> (times, values), oldest first
        self._tags: dict[str, dict[str, tuple[str, str, str]]] = {}  # policy key -> namespaced key -> (value, key id, value id)

    # -- changes ------------------------------------------------------------------------------------
    def set_policy(self, key: str, policy: Mapping[str, Any] | None, *, initial: bool = False) -> None:
        """Records ``policy`` (its ``bindings``) as the policy of ``key`` from now on (``initial``:
        since ever, effective at once: what the sandbox starts with)."""
        bindings = tuple(
            (b["role"], tuple(b.get("members") or ()), (b.get("condition") or {}).get("expression"))
            for b in (policy or {}).get("bindings") or ()
        )
        self._record(key, bindings, initial)

    def set_role(self, role_id: str, role: Mapping[str, Any] | None, *, initial: bool = False) -> None:
        """Records custom role ``role_id`` (None: it is gone) as it is from now on."""
        self._record(f"role:{role_id}", copy.deepcopy(dict(role)) if role is not None else None, initial)

    def forget(self, key: str) -> None:
        """``key``'s resource is deleted: its policy goes at once (a new resource of the same name
        starts with none)."""
        with self._lock:
            self._history.pop(key, None)
            self._tags.pop(key, None)

    def attach_tag(self, key: str, namespaced_key: str, value: str, *, key_id: str = "", value_id: str = "") -> None:
        """Attaches tag ``namespaced_key`` (``123456789012/env``) = ``value`` (``prod``) to the
        resource whose policy key is ``key``; its descendants inherit it. Permanent ids default to
        stable made-up ones (``tagKeys/…``, ``tagValues/…``)."""
        key_id = key_id or "tagKeys/" + _digits(namespaced_key)
        value_id = value_id or "tagValues/" + _digits(f"{namespaced_key}/{value}")
        with self._lock:
            self._tags.setdefault(key, {})[namespaced_key] = (value, key_id, value_id)

    def _record(self, key: str, value: Any, initial: bool) -> None:
        with self._lock:
            times, values = self._history.setdefault(key, ([], []))
            if initial:
                times[:], values[:] = [-math.inf], [value]
            else:
                times.append(self.clock())
                values.append(value)

    # -- what is in force -----------------------------------------------------------------------------
    def effective_time(self) -> float:
        """The moment whose policies are in force now."""
        return self.clock() - self.delay

    def as_of(self, key: str, when: float) -> Any:
        """``key``'s value as it was at ``when`` (None: none yet)."""
        with self._lock:
            times, values = self._history.get(key, ((), ()))
            index = bisect.bisect_right(times, when)
            return values[index - 1] if index else None

    def tags(self, keys: Iterable[str]) -> dict[str, tuple[str, str, str]]:
        """The tags of a resource whose policy chain is ``keys`` (nearest first): its own win."""
        found: dict[str, tuple[str, str, str]] = {}
        with self._lock:
            for key in reversed(list(keys)):
                found.update(self._tags.get(key, {}))
        return found


class Evaluator:
    """Decides checks against a :class:`PolicyStore` for the project ``project`` (id and number)."""

    def __init__(self, store: PolicyStore, *, project: str, project_number: str) -> None:
        self.store, self.project, self.project_number = store, project, project_number
        self._programs: dict[str, Any] = {}
        self._unknown_roles: set[str] = set()

    def allows(self, principal: str, permission: str, resource: Resource) -> bool:
        """Whether ``principal`` (``serviceAccount:…``, ``user:…``, or :data:`ANONYMOUS`) holds
        ``permission`` on ``resource`` now."""
        return permission in self.granted(principal, [permission], resource)

    def granted(self, principal: str, permissions: Iterable[str], resource: Resource) -> list[str]:
        """Those of ``permissions`` that ``principal`` holds on ``resource`` now, in their order
        (``testIamPermissions``)."""
        wanted = list(dict.fromkeys(permissions))
        when = self.store.effective_time()
        held: set[str] = set()
        for key in resource.policies:
            for role, members, condition in self.store.as_of(key, when) or ():
                if not any(self._is_member(principal, member, when) for member in members):
                    continue
                granted = self._role_permissions(role, when).intersection(wanted).difference(held)
                if granted and (condition is None or self._holds(condition, resource)):
                    held |= granted
            if held.issuperset(wanted):
                break
        return [permission for permission in wanted if permission in held]

    # -- members, roles, conditions ----------------------------------------------------------------------
    def _is_member(self, principal: str, member: str, when: float) -> bool:
        if member == "allUsers":
            return True
        if member == "allAuthenticatedUsers":
            return principal != ANONYMOUS
        kind, _, value = member.partition(":")
        if kind in CONVENIENCE:  # a bucket's projectOwner:P: whoever holds the basic role on project P, unconditionally
            return value in (self.project, self.project_number) and any(
                role == CONVENIENCE[kind] and condition is None and principal != ANONYMOUS and _same(principal, members)
                for role, members, condition in self.store.as_of("project", when) or ()
            )
        return principal != ANONYMOUS and _same(principal, (member,))

    def _role_permissions(self, role: str, when: float) -> frozenset[str]:
        if role.startswith("roles/"):
            found = predefined_role(role)
            if found is None and role not in self._unknown_roles:
                self._unknown_roles.add(role)
                logger.warning("sandbox GCP: no permission list for %s (add it to roles/ beside policy.py); it grants nothing", role)
            return found or frozenset()
        custom = _CUSTOM_ROLE.fullmatch(role)
        if custom is None or custom.group(1) not in (self.project, self.project_number):
            return frozenset()
        definition = self.store.as_of(f"role:{custom.group(2)}", when)
        if not definition or definition.get("deleted") or definition.get("stage") == "DISABLED":
            return frozenset()
        return frozenset(definition.get("includedPermissions") or ())

    def _holds(self, expression: str, resource: Resource) -> bool:
        import celpy
        from celpy import celtypes

        try:
            program = self.parse(expression)
        except ValueError:
            return False
        tags = self.store.tags(resource.policies)
        functions = {
            "hasTagKey": lambda _resource, key: celtypes.BoolType(str(key) in tags),
            "hasTagKeyId": lambda _resource, key_id: celtypes.BoolType(any(t[1] == str(key_id) for t in tags.values())),
            "matchTag": lambda _resource, key, value: celtypes.BoolType(tags.get(str(key), ("",))[0] == str(value)),
            "matchTagId": lambda _resource, key_id, value_id: celtypes.BoolType(
                any(t[1] == str(key_id) and t[2] == str(value_id) for t in tags.values())
            ),
            "extract": lambda text, template: celtypes.StringType(extract(str(text), str(template))),
        }
        now = datetime.datetime.fromtimestamp(self.store.clock(), tz=datetime.UTC)
        activation = {
            "resource": celpy.json_to_cel(dict(resource.attributes)),
            "request": celtypes.MapType({celtypes.StringType("time"): celtypes.TimestampType(now)}),
        }
        try:
            result = celpy.Environment().program(program, functions=functions).evaluate(activation)
        except celpy.CELEvalError:
            return False
        return isinstance(result, celtypes.BoolType) and bool(result)

    def parse(self, expression: str) -> Any:
        """``expression`` parsed (cached); ValueError if it is not a condition IAM takes (:func:`compile_condition`)."""
        if expression not in self._programs:
            self._programs[expression] = compile_condition(expression)
        return self._programs[expression]


# The functions IAM Conditions take: those the attribute reference lists for its attributes (resource.name, request.host
# and request.path: startsWith, endsWith, extract; resource tags; request.time and its date/time functions; API
# attributes; Compute Engine's forwarding-rule functions). cel-python has more (CEL's standard library and macros:
# contains, matches, size, has, exists, all, map, filter, int, string…): Google refuses a policy naming any of them.
IAM_FUNCTIONS = frozenset(
    {
        *("startsWith", "endsWith", "extract"),
        *("hasTagKey", "hasTagKeyId", "matchTag", "matchTagId"),
        *("timestamp", "duration", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getFullYear"),
        *("getHours", "getMilliseconds", "getMinutes", "getMonth", "getSeconds"),
        *("getAttribute", "hasOnly"),
        *("isForwardingRuleCreationOperation", "matchLoadBalancingSchemes"),
    }
)


@functools.lru_cache(maxsize=1024)
def compile_condition(expression: str) -> Any:
    """``expression`` compiled by cel-python, if it is a condition IAM Conditions take; ValueError (with
    what to fix) if it is not CEL, calls a function outside :data:`IAM_FUNCTIONS`, or holds a bad
    ``extract()`` template: Google refuses those when the policy is set (400 INVALID_ARGUMENT).

    >>> compile_condition('resource.name.startsWith("p/42/s") && request.time < timestamp("2030-01-01T00:00:00Z")') is not None
    True
    >>> for refused in ('resource.name.contains("x")', 'size(resource.name) > 3', 'has(resource.name)'):
    ...     try:
    ...         compile_condition(refused)
    ...     except ValueError as error:
    ...         print(str(error).split(": ")[1].split(";")[0])
    contains() is not supported in IAM Conditions
    size() is not supported in IAM Conditions
    has() is not supported in IAM Conditions
    """
    import celpy

    try:
        program = celpy.Environment().compile(expression)
    except celpy.CELParseError as error:
        raise ValueError(f"invalid condition expression {expression!r}: {error}") from None
    for called in _called_functions(program):
        if called not in IAM_FUNCTIONS:  # valid CEL, but not in IAM's profile of it
            raise ValueError(
                f"invalid condition expression {expression!r}: {called}() is not supported in IAM Conditions; "
                "use the functions of their attribute reference (resource.name: startsWith(), endsWith(), extract(), == and !=)"
            )
    for template in _EXTRACT_CALL.findall(expression):  # Google checks them when the policy is set
        try:
            extract("", template[1])
        except ValueError as error:
            raise ValueError(f"invalid condition expression {expression!r}: {error}") from None
    return program


_EXTRACT_CALL = re.compile(r"""\.extract\(\s*(["'])(.*?)\1\s*\)""")


def _called_functions(program: Any) -> list[str]:
    """The functions and methods (and macros: ``has``, ``exists``…) a compiled expression calls, in order."""
    found = []
    for tree in program.iter_subtrees_topdown():
        if tree.data == "ident_arg":  # f(args)
            found.append(str(tree.children[0]))
        elif tree.data == "member_dot_arg":  # x.f(args)
            found.append(str(tree.children[1]))
    return found


def without_strings(expression: str) -> str:
    """``expression`` with each string literal emptied (what is code, not text).

    >>> without_strings('a.startsWith("x matches(y)") && b')
    'a.startsWith("") && b'
    """
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expression)


def extract(text: str, template: str) -> str:
    """IAM Conditions' ``<string>.extract(<template>)``: the part of ``text`` that the template's
    ``{placeholder}`` stands for: after the first occurrence of the text before it, up to the next
    occurrence of the text after it (to the end when nothing follows it); "" when ``text`` does not
    hold the template.

    >>> extract("projects/p/secrets/prefect-remote-a-r-1/versions/1", "/secrets/{name}/")
    'prefect-remote-a-r-1'
    >>> extract("projects/p/zones/z/instances/pr-a-c0-x", "/instances/{name}"), extract("projects/p", "/secrets/{x}/")
    ('pr-a-c0-x', '')
    """
    found = re.fullmatch(r"([^{}]*)\{[^{}]+\}([^{}]*)", template)
    if found is None:
        raise ValueError(f"extract({template!r}): a template holds one {{placeholder}}")
    before, after = found.groups()
    start = text.find(before)
    if start < 0:
        return ""
    rest = text[start + len(before) :]
    if not after:
        return rest
    end = rest.find(after)
    return rest[:end] if end >= 0 else ""


def _same(principal: str, members: Iterable[str]) -> bool:
    """Whether ``principal`` is one of ``members`` (emails compare case-insensitively, as Google's)."""
    return principal.lower() in (member.lower() for member in members)


def _digits(text: str) -> str:
    return str(int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10**12).zfill(12)
