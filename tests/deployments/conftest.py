"""Deployments run on the workers' pools: their fixtures (an API client of the session's server, the test-push pool)."""

from tests.workers.conftest import api, push_pool  # noqa: F401
