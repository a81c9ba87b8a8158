"""The sandbox clouds the cluster contract runs on (tests/cluster/clouds.py)."""

from __future__ import annotations

import pytest

from tests.cluster.clouds import CLOUDS, Cloud

pytest.register_assert_rewrite("tests.cluster.contract")  # the contract's tests, run from test_contract_<cloud>.py


@pytest.fixture(scope="module", params=list(CLOUDS))
def cloud(request) -> Cloud:
    """The session's sandbox of one cloud, as a shell after `prefect-remote sandbox <cloud>` sees it,
    for one module (so that its clusters outlive one test). A module of one cloud's own tests
    parametrizes it with that cloud only (``indirect``)."""
    kind = CLOUDS[request.param]
    sandbox = request.getfixturevalue(f"{request.param}_sandbox")
    with pytest.MonkeyPatch.context() as patch:
        kind.use_sandbox(patch, sandbox)
        yield kind(sandbox)
    sandbox.end_all_instances()
