"""The providers every contract test runs against. A new provider adds itself to PROVIDERS, with its
boot time: the suite's waits scale with it (and its lease timing with the provider's lease_interval),
so a cloud whose machines take a minute to boot runs the same tests as the local provider.

A provider whose machines cannot boot here yet says why in ``cannot_boot``: it then runs only the
checks that need no machine to boot (those that do take the ``timing`` fixture, and are skipped).
``fixtures`` names fixtures set up before ``make`` (the AWS case's emulated account)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from prefect_remote.providers.aws.provider import AWSProvider
from prefect_remote.providers.base import Provider
from prefect_remote.providers.gcp import GCPProvider
from prefect_remote.providers.local import LocalProvider
from tests.conftest import needs_namespace
from tests.providers.infra_clouds import INFRA_CLOUDS, InfraCloud


@dataclass(frozen=True)
class Case:
    make: Callable[[], Provider]
    boot_time: float  # typical seconds from launch to a running payload, on a loaded test host
    marks: tuple = ()
    fixtures: tuple[str, ...] = ()
    cannot_boot: str | None = None
    reachable: bool = True  # its machines accept connections, so have addresses (a Cloud Run task does not)


PROVIDERS = {
    "local-process": Case(lambda: LocalProvider(isolation="process"), boot_time=1.0),
    "local-namespace": Case(lambda: LocalProvider(isolation="namespace"), boot_time=1.0, marks=(needs_namespace,)),
    # On the session's sandbox AWS: instances boot from the stock image path (uv, the agent's environment).
    "aws": Case(AWSProvider, boot_time=4.0, fixtures=("aws_env",)),
    # On the session's sandbox GCP: one case per service, both booting from the stock image path.
    "gcp-cloud-run": Case(lambda: GCPProvider(service="cloud-run"), boot_time=4.0, fixtures=("gcp_env",), reachable=False),
    "gcp-compute": Case(lambda: GCPProvider(service="compute"), boot_time=4.0, fixtures=("gcp_env",)),
}


@dataclass(frozen=True)
class Timing:
    """The contract suite's clock for one provider."""

    boot_time: float
    lease_interval: float

    def wait(self, seconds: float = 0.0) -> float:
        """How long to wait for something that takes ``seconds`` once a machine runs: a machine's boot
        and end, with room for a loaded host."""
        return seconds + 15 * self.boot_time

    @property
    def keepalive(self) -> float:
        """A short keepalive the provider can keep: longer than its lease_interval."""
        return 1.5 * self.lease_interval


@pytest.fixture(params=[pytest.param(name, marks=list(case.marks)) for name, case in PROVIDERS.items()])
def case(request) -> Case:
    return PROVIDERS[request.param]


@pytest.fixture
def provider(case, request) -> Provider:
    for name in case.fixtures:
        request.getfixturevalue(name)
    return case.make()


@pytest.fixture
def timing(case, provider) -> Timing:
    """The clock of tests that wait on a booted machine."""
    if case.cannot_boot:
        pytest.skip(case.cannot_boot)
    return Timing(case.boot_time, provider.lease_interval)


@pytest.fixture(params=list(INFRA_CLOUDS))
def infra(request, monkeypatch) -> InfraCloud:
    """One cloud's sandbox, where the infra contract provisions and tears down (tests/providers/infra_clouds.py);
    nothing provisioned before or after the test."""
    kind = INFRA_CLOUDS[request.param]
    sandbox = request.getfixturevalue(f"{request.param}_env")
    with kind.prepared(sandbox, monkeypatch):
        yield kind(sandbox)
