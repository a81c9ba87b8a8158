"""The providers every contract test runs against. A new provider adds itself to PROVIDERS."""

import pytest

from prefect_remote.providers.local import LocalProvider
from tests.conftest import needs_namespace

PROVIDERS = {
    "local-process": lambda: LocalProvider(isolation="process"),
    "local-namespace": lambda: LocalProvider(isolation="namespace"),
}
MARKS = {"local-namespace": [needs_namespace]}


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, [])) for name in PROVIDERS])
def provider(request):
    return PROVIDERS[request.param]()
