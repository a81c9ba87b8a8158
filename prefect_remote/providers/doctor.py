"""What every cloud's doctor checks are made of (:mod:`prefect_remote.doctor` runs them): a
:class:`Finding` per check, the :class:`Needs` of the pool they check against (the :func:`largest`
of its machines), and :func:`guarded`, which turns a check that cannot run into a failed finding
that says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_remote.providers.base import InstanceType


@dataclass(frozen=True)
class Finding:
    """One check's outcome: what was checked, whether it passed, what was found, and what to fix."""

    check: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Needs:
    """What the account must allow: the largest machine the pool asks for (``instance_type``, with
    its CPUs and GPUs), where that figure comes from, and the store machines read software from;
    ``instance_types``, every machine the pool asks for (a provider whose machines run on more than
    one service checks each service's largest)."""

    instance_type: InstanceType
    source: str
    store: str | None
    instance_types: tuple[InstanceType, ...] = ()

    @property
    def cpu(self) -> int:
        return self.instance_type.cpu

    @property
    def gpu(self) -> int:
        return self.instance_type.gpu


def largest(instance_types: Iterable[InstanceType]) -> InstanceType:
    """The largest of ``instance_types`` (at least one): the most GPUs, then CPUs, then memory."""
    return max(instance_types, key=lambda t: (t.gpu, t.cpu, t.memory))


def guarded(check: str, run: Callable[[], Finding | Iterable[Finding]]) -> list[Finding]:
    """``run``'s findings; what it raises becomes a FAILED ``check`` whose fix is the error's text
    (the package's errors name their fix)."""
    try:
        found = run()
    except Exception as error:  # a check that cannot run has failed: say why, go on with the others
        return [Finding(check, False, f"could not check: {type(error).__name__}", str(error) or repr(error))]
    return [found] if isinstance(found, Finding) else list(found)
