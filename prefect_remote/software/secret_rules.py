"""Two detect-secrets detectors for credential files that detect-secrets has no detector for
(:mod:`.secret_files` runs them beside its own).
"""

from __future__ import annotations

import re

from detect_secrets.plugins.base import RegexBasedDetector


class KubeconfigClientKeyDetector(RegexBasedDetector):
    """A kubeconfig's client key: base64 of a PEM key, which the private-key detector cannot see."""

    secret_type = "Kubeconfig client key"
    denylist = (re.compile(r"^\s*client-key-data:\s*[A-Za-z0-9+/=]{40,}\s*$", re.MULTILINE),)


class GoogleCredentialFileDetector(RegexBasedDetector):
    """A Google credential file with no private key in it: a user's refresh token (``gcloud auth
    application-default login``), or a workload identity federation or impersonation config."""

    secret_type = "Google credential file"
    denylist = (re.compile(r'"type"\s*:\s*"(authorized_user|external_account|impersonated_service_account)"'),)


OUR_DETECTORS = (KubeconfigClientKeyDetector, GoogleCredentialFileDetector)
