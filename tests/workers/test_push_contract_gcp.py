"""The push contract (push_contract.py) on the sandbox GCP: a module of its own, so that a parallel test
worker runs it while another runs the other clouds'."""

import pytest

from tests.workers.push_contract import *  # noqa: F403 - the contract's tests and fixtures, in their order

pytestmark = pytest.mark.parametrize("cloud", ["gcp"], indirect=True)
