"""Where a cloud is out of capacity, what to try next: the policy every cloud shares.

A launch's machines are started by trying :class:`Placement`\\ s in order (:func:`placements`) until
one has capacity (:func:`first_with_capacity`). Each cloud declares, as data, the error codes that
mean "no capacity here" (EC2's ``InsufficientInstanceCapacity``, Compute Engine's
``ZONE_RESOURCE_POOL_EXHAUSTED``…), and words its own messages. Today a placement is a market:
``spot_with_fallback`` tries spot, then on-demand; and where a cloud names zones, each market in
every zone it offers, the cheaper market's zones first (a stock-out or a zonal quota is one zone's).

>>> [placement.market for placement in placements("spot_with_fallback")]
['spot', 'on-demand']
>>> [str(placement) for placement in placements("spot_with_fallback", ["us-central1-a", "us-central1-b"])]
['spot in us-central1-a', 'spot in us-central1-b', 'on-demand in us-central1-a', 'on-demand in us-central1-b']
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
    """One way to start a launch's machines: on spot capacity or on-demand, in a zone (None: the
    provider's own; on EC2, a subnet, which lies in one availability zone)."""

    spot: bool
    zone: str | None = None

    @property
    def market(self) -> str:
        return "spot" if self.spot else "on-demand"

    def __str__(self) -> str:
        return self.market + (f" in {self.zone}" if self.zone else "")


def placements(policy: SpotPolicy, zones: Sequence[str | None] = (None,)) -> list[Placement]:
    """The placements ``policy`` allows in ``zones``, in the order to try them: every zone of a
    market before the next market."""
    markets = {"on-demand": [False], "spot": [True], "spot_with_fallback": [True, False]}[policy]
    return [Placement(spot=spot, zone=zone) for spot in markets for zone in zones]


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
    said through ``falling_back(failed, next, code)``; after the last, ``refused(last, code, tried)``
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
