"""The gcp provider's options: keyword arguments of ``get_provider("gcp", ...)``, a pool's provider
block's options, else ``PREFECT_REMOTE_GCP_<OPTION>`` (``PREFECT_REMOTE_GCP_PROJECT``…).

>>> GCPOptions(project="my-project", region="europe-west1").zone_or_default
'europe-west1-b'
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from prefect_remote.providers.options import ProviderOptions
from prefect_remote.spec import ingress_source

Service = Literal["auto", "cloud-run", "compute"]

_REGION = re.compile(r"[a-z]+-[a-z]+\d+")
_ZONE = re.compile(r"[a-z]+-[a-z]+\d+-[a-z]")
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com|[^@\s]+@developer\.gserviceaccount\.com")
# Regions whose first zone is not "-a" (Compute Engine's zone names).
FIRST_ZONES = {"europe-west1": "b", "us-east1": "b", "asia-east1": "a"}


DEFAULT_VM_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
# A GPU VM's default: Google's Deep Learning VM base image (deeplearning-platform-release), whose family
# ships NVIDIA's driver and CUDA, so a GPU works at boot with no driver install in the boot phases (the
# stock Debian image has none). x86_64 only.
GPU_VM_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"
GPU_VM_IMAGE_GIB = 50  # its disk size: a boot disk is never smaller


class GCPOptions(ProviderOptions):
    """Where gcp machines run and as whom; each one not given is read from ``PREFECT_REMOTE_GCP_<OPTION>``."""

    model_config = SettingsConfigDict(env_prefix="PREFECT_REMOTE_GCP_")

    project: str | None = Field(default=None, description="Project id; default GOOGLE_CLOUD_PROJECT or the credentials'.")
    region: str = Field(default="us-central1", description="Region of Cloud Run jobs and Compute Engine VMs.")
    zone: str | None = Field(default=None, description="Compute Engine zone; default the region's first.")
    service: Service = Field(
        default="auto",
        title="GCP service",
        description="Cloud Run jobs, Compute Engine VMs, or 'auto': Cloud Run unless the spec needs a VM.",
    )
    service_account: str | None = Field(
        default=None,
        description="Email of the service account machines run as (what they read secrets, the store and end themselves with); "
        "`--provision-infra` makes one.",
    )
    network: str = Field(default="default", description="VPC network of Compute Engine VMs (and the firewall rule).")
    subnetwork: str | None = Field(default=None, description="Subnetwork of Compute Engine VMs; default the network's in the region.")
    vm_image: str = Field(
        default=DEFAULT_VM_IMAGE,
        description="Compute Engine boot image (or image family) URL; by default Debian 12, and for a GPU machine Google's Deep "
        "Learning VM image with NVIDIA's driver.",
    )
    log_name: str = Field(default="prefect-remote", description="Cloud Logging log machines write to.")
    api_endpoint: str | None = Field(
        default=None,
        description="Base URL for every Google API but Cloud Storage (which reads STORAGE_EMULATOR_HOST): a Private Service "
        "Connect endpoint, or `prefect-remote sandbox gcp`'s. Default: Google's own endpoints.",
    )
    public_ip: str | None = Field(
        default=None,
        description="This launcher's public IP, for allow_ingress_from='me' (default: asked of checkip.amazonaws.com). Not a machine's.",
    )
    lease_interval: float = Field(
        default=30.0,
        ge=5.0,
        description="Seconds between a machine's reads of its lease (its owner's loss is noticed this long after keepalive).",
    )
    allow_ingress_from: str = Field(default="me", description="Who reaches a cluster's scheduler when its spec does not say.")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.fullmatch(value):
            raise ValueError(f"region={value!r}: expected a Google Cloud region such as 'us-central1' or 'europe-west1'")
        return value

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None and not _ZONE.fullmatch(value):
            raise ValueError(f"zone={value!r}: expected a Compute Engine zone such as 'us-central1-a'")
        return value

    @field_validator("project")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        if value is not None and not _PROJECT.fullmatch(value):
            raise ValueError(
                f"project={value!r}: expected a project id (6-30 lowercase letters, digits or '-', starting with a letter), such "
                "as 'my-project-123'"
            )
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.fullmatch(value):
            raise ValueError(
                f"service_account={value!r}: expected a service account email such as 'prefect-remote@my-project.iam.gserviceaccount.com'"
            )
        return value

    @field_validator("allow_ingress_from")
    @classmethod
    def _ingress(cls, value: str) -> str:
        return ingress_source(value)

    @property
    def zone_or_default(self) -> str:
        return self.zone or f"{self.region}-{FIRST_ZONES.get(self.region, 'a')}"
