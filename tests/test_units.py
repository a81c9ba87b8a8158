import pytest

from prefect_remote.units import format_duration, format_size, parse_duration, parse_size


def test_sizes():
    assert parse_size("64 GiB") == 64 * 2**30
    assert parse_size("512 GB") == 512 * 10**9
    assert parse_size("10k") == 10_000
    assert parse_size(" 2 MiB ") == 2 * 2**20
    assert format_size(3 * 2**30) == "3 GiB" and format_size(1536 * 2**20) == "1.5 GiB" and format_size(12) == "12 B"


@pytest.mark.parametrize("bad", ["lots", "1 GiB 2", "GiB", "-1 GiB", "1e3", float("inf"), None, [1]])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="expected a size such as"):
        parse_size(bad)


def test_durations():
    assert parse_duration("2 hours") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1h 30m 15s") == 5415
    assert parse_duration("250ms") == 0.25
    assert format_duration(5400) == "1h30m" and format_duration(2.5) == "2.5s" and format_duration(86461) == "1d1m"


@pytest.mark.parametrize("bad", ["soon", "5 parsecs", "h", "1h x", "", "-5s", 0, None])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="expected a duration such as"):
        parse_duration(bad)
