"""Where a cloud is out of capacity, what to try next: the policy every cloud shares.

A launch's machines are started by trying :class:`Placement`\\ s in order (:func:`placements`) until
one has capacity (:func:`first_with_capacity`). Each cloud declares, as data, the error codes that
mean "no capacity here" (EC2's ``InsufficientInstanceCapacity``, Compute Engine's
``ZONE_RESOURCE_POOL_EXHAUSTED``…), and words its own messages. A placement is a market and a
place (a subnet, a zone): ``spot_with_fallback`` tries spot in every place, then on-demand in every
place, as SkyPilot and Coiled fail over between zones.

>>> [placement.market for placement in placements("spot_with_fallback")]
['spot', 'on-demand']
>>> [(p.market, p.where) for p in placements("spot", ["subnet-a", "subnet-b"])]
[('spot', 'subnet-a'), ('spot', 'subnet-b')]
>>> first_with_capacity(placements("spot_with_fallback"), lambda p: p.market, shortage=lambda e: None,
...                     refused=lambda p, code, tried: None, falling_back=lambda p, then, code: None)
'spot'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from prefect_remote.spec import SpotPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """One way to start a launch's machines: on spot capacity or on-demand, in one place (a subnet or
    zone; None: wherever the cloud chooses)."""

    spot: bool
    where: str | None = None

    @property
    def market(self) -> str:
        return "spot" if self.spot else "on-demand"


def placements(policy: SpotPolicy, where: Sequence[str | None] = (None,)) -> list[Placement]:
    """The placements ``policy`` allows in the places ``where``, in the order to try them: every
    place on the preferred market before the fallback market."""
    markets = {"on-demand": [False], "spot": [True], "spot_with_fallback": [True, False]}[policy]
    return [Placement(spot=spot, where=place) for spot in markets for place in where]


def first_with_capacity(
    tried: Sequence[Placement],
    start: Callable[[Placement], T],
    *,
    shortage: Callable[[Exception], str | None],
    refused: Callable[[Placement, str, Sequence[Placement]], Exception],
    falling_back: Callable[[Placement, Placement, str], None],
) -> T:
    """What ``start`` returns for the first of ``tried`` that has capacity. An error of ``start`` that
    ``shortage`` reads a capacity code from (the cloud's, else None) moves on to the next placement,
    said (logged) through ``falling_back(failed, next, code)``; after the last, ``refused(last, code, tried)``
    is raised (a :class:`~prefect_remote.errors.CapacityError` that says what to try). Any other
    error passes at once."""
    for index, placement in enumerate(tried):
        try:
            return start(placement)
        except Exception as error:
            code = shortage(error)
            if code is None:
                raise
            if index + 1 == len(tried):
                raise refused(placement, code, tried) from None
            falling_back(placement, tried[index + 1], code)
    raise ValueError("no placement to try")
