"""For the modules whose tests need the Prefect server's push service: importing
:func:`prefect_server_with_push_service` makes ``prefect_server`` (and every fixture built on it,
such as ``api``) that module's :func:`tests.conftest.push_server`. Such modules run in one xdist
worker (listed in ``tests/conftest.py``'s ``PUSH_SERVICE_MODULES``)."""

import pytest


@pytest.fixture(scope="session", name="prefect_server")
def prefect_server_with_push_service(push_server: str) -> str:
    """The Prefect server whose push service serves the test-push* pools."""
    return push_server
