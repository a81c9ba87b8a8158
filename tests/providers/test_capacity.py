"""Where capacity is short, what to try next: the policy both clouds use (pure; each cloud's own
capacity errors are checked against its sandbox in tests/providers/aws and gcp)."""

from __future__ import annotations

import pytest

from prefect_remote.errors import CapacityError
from prefect_remote.providers.capacity import Placement, first_with_capacity, placements


class NoCapacity(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def attempt(short: set[str], log: list[str]):
    """What a cloud does: refuses the markets in ``short`` with a capacity code, starts on the others."""

    def start(placement: Placement) -> str:
        log.append(f"try {placement.market}")
        if placement.market in short:
            raise NoCapacity("NO_CAPACITY")
        return f"started on {placement.market}"

    return start


def run(policy: str, short: set[str], log: list[str]):
    return first_with_capacity(
        placements(policy),
        attempt(short, log),
        shortage=lambda error: error.code if isinstance(error, NoCapacity) else None,
        refused=lambda placement, code, tried: CapacityError(f"no {placement.market} capacity ({code}) after {len(tried)}"),
        falling_back=lambda placement, then, code: log.append(f"{placement.market} short ({code}): {then.market}"),
    )


def test_each_policy_tries_what_it_allows_in_order():
    assert [p.market for p in placements("on-demand")] == ["on-demand"]
    assert [p.market for p in placements("spot")] == ["spot"]
    assert [p.market for p in placements("spot_with_fallback")] == ["spot", "on-demand"]


def test_the_first_placement_with_capacity_wins_and_the_fallback_is_said():
    log: list[str] = []
    assert run("spot_with_fallback", set(), log) == "started on spot" and log == ["try spot"]
    log.clear()
    assert run("spot_with_fallback", {"spot"}, log) == "started on on-demand"
    assert log == ["try spot", "spot short (NO_CAPACITY): on-demand", "try on-demand"]


def test_the_last_shortage_is_refused_in_the_clouds_words_and_other_errors_pass():
    log: list[str] = []
    with pytest.raises(CapacityError, match=r"no spot capacity \(NO_CAPACITY\) after 1") as refused:
        run("spot", {"spot"}, log)
    assert refused.value.__suppress_context__  # the cloud's own error is not chained under the refusal
    with pytest.raises(CapacityError, match=r"no on-demand capacity \(NO_CAPACITY\) after 2"):
        run("spot_with_fallback", {"spot", "on-demand"}, log)

    def broken(placement: Placement) -> str:
        raise PermissionError("denied")

    with pytest.raises(PermissionError):  # not a shortage: no fallback
        first_with_capacity(
            placements("spot_with_fallback"),
            broken,
            shortage=lambda error: None,
            refused=lambda *_: AssertionError(),
            falling_back=lambda *_: pytest.fail("fell back on an error that is no shortage"),
        )


def test_zones_are_tried_within_a_market_before_the_next_market():
    tried = placements("spot_with_fallback", ["z-a", "z-b"])
    assert [str(p) for p in tried] == ["spot in z-a", "spot in z-b", "on-demand in z-a", "on-demand in z-b"]
    said: list[str] = []

    def start(placement: Placement) -> str:
        if placement.spot or placement.zone == "z-a":
            raise NoCapacity("STOCKOUT")
        return str(placement)

    started = first_with_capacity(
        tried,
        start,
        shortage=lambda error: error.code if isinstance(error, NoCapacity) else None,
        refused=lambda placement, code, tried: CapacityError(code),
        falling_back=lambda placement, then, code: said.append(f"{placement} short: {then}"),
    )
    assert started == "on-demand in z-b"
    assert said == ["spot in z-a short: spot in z-b", "spot in z-b short: on-demand in z-a", "on-demand in z-a short: on-demand in z-b"]
    assert [str(p) for p in placements("on-demand")] == ["on-demand"]  # no zone: the provider's own
