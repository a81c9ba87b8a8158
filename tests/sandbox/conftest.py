"""Google's own clients, pointed at the session's sandbox GCP as a user's would be."""

from __future__ import annotations

import pytest

from tests.conftest import iam_as_marked


@pytest.fixture(autouse=True)
def _iam_as_marked(request):
    """``no_iam`` for the tests here, which use the session's sandbox GCP directly (gcp_env does it elsewhere)."""
    if request.node.get_closest_marker("no_iam") is None:
        yield
        return
    with iam_as_marked(request.getfixturevalue("gcp_sandbox"), request):
        yield


@pytest.fixture(scope="session")
def google(gcp_sandbox):
    """Client factories for the sandbox: ``google.run("jobs")``, ``google.secrets()``, ``google.logging()``,
    each with the launcher's service-account key and ``client_options={"api_endpoint": …}``."""
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_file(
        str(gcp_sandbox.key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    options = {"api_endpoint": gcp_sandbox.url}

    class Clients:
        project = gcp_sandbox.project

        @staticmethod
        def run(kind: str):
            from google.cloud import run_v2

            factory = {"jobs": run_v2.JobsClient, "executions": run_v2.ExecutionsClient, "tasks": run_v2.TasksClient}[kind]
            return factory(transport="rest", credentials=credentials, client_options=options)

        @staticmethod
        def secrets():
            from google.cloud import secretmanager

            return secretmanager.SecretManagerServiceClient(transport="rest", credentials=credentials, client_options=options)

        @staticmethod
        def logging():
            from google.cloud import logging as cloud_logging

            return cloud_logging.Client(project=gcp_sandbox.project, credentials=credentials, _use_grpc=False, client_options=options)

    return Clients
