"""Deployments run on the workers' pools: their API client of the session's server (the test-push pool
is the session's, in tests/conftest.py)."""

from tests.workers.conftest import api  # noqa: F401
