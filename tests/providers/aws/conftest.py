"""Fixtures for the EC2 provider's tests: the provider (as the docs' launcher) and plain boto3 clients
of the account's owner (a test's look at the account, and its set-up), both pointed at the session's
moto server by ``aws_env`` (the provider does not know it is not AWS)."""

from __future__ import annotations

import pytest

from prefect_remote.providers.aws.provider import AWSProvider

# A documentation address (TEST-NET-3): "me" without asking checkip.amazonaws.com.
LAUNCHER_IP = "203.0.113.7"


@pytest.fixture(autouse=True)
def launcher_ip(aws_env, monkeypatch) -> str:
    monkeypatch.setenv("PREFECT_REMOTE_AWS_PUBLIC_IP", LAUNCHER_IP)
    return LAUNCHER_IP


@pytest.fixture
def provider(aws_env) -> AWSProvider:
    return AWSProvider()


@pytest.fixture
def ec2(aws_env):
    return aws_env.client("ec2")


@pytest.fixture
def ssm(aws_env):
    return aws_env.client("ssm")
