"""How a rebuild's uv failure reads in one line (a machine's end reason, an AWS tag of 256 characters)."""

import pytest

from prefect_remote.software.rebuild import uv_error_summary

DOWNLOAD_TIMEOUT = """\
Using Python 3.11.7 environment at: /srv/prefect-remote/envs/senv-0123/venv
Resolved 12 packages in 3ms
error: Failed to download `numpy==2.1.0`
  Caused by: Failed to fetch: `https://files.pythonhosted.org/packages/numpy-2.1.0.whl`
  Caused by: error sending request for url (https://files.pythonhosted.org/packages/numpy-2.1.0.whl)
  Caused by: operation timed out
hint: raise UV_HTTP_TIMEOUT
"""

UNSATISFIABLE = """\
error: No solution found when resolving dependencies
  cause: Because there is no version of numpy==0.0.1 and you require numpy==0.0.1, we can conclude that your requirements \
are unsatisfiable.
"""


@pytest.mark.parametrize(
    "output, summary",
    [
        (DOWNLOAD_TIMEOUT, "Failed to download `numpy==2.1.0`: operation timed out"),
        (UNSATISFIABLE, "No solution found when resolving dependencies: Because there is no version of numpy==0.0.1"),
        ("error: No interpreter found for Python 3.11.99", "No interpreter found for Python 3.11.99"),
        ("Killed\n", "Killed"),
        ("", "uv failed with no output"),
    ],
)
def test_uvs_error_chain_reads_as_what_failed_and_its_innermost_cause(output, summary):
    assert uv_error_summary(output).startswith(summary)
    assert "\n" not in uv_error_summary(output)
