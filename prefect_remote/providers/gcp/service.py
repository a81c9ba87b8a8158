"""One way Google Cloud runs a gcp machine (:class:`GCPService`: Cloud Run, Compute Engine), what
a service uses of the provider it serves (:class:`ServiceHost`), and the label vocabulary both
services write and list by.

GCP labels hold lowercase letters, digits, ``_`` and ``-``, at most 63 characters: a user's tag is
a label when its value can be one (:func:`labels_for`), and every tag as given is kept beside the
labels (a VM's metadata, a job's annotations).

>>> labels_for({"dask-role": "worker", "dask-cluster": "Big Run", "prefect.io/flow-run-id": "abc"})
{'dask-role': 'worker', 'prefect_io_flow-run-id': 'abc'}
>>> owner_labels("Host.example:4242")
{'prefect-remote-owner': 'host_example_4242'}
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

from prefect_remote.errors import RemoteError
from prefect_remote.providers.base import Capabilities, InstanceType, Launch, Machine, pick_instance_type

if TYPE_CHECKING:
    from prefect_remote.providers.gcp.clients import GoogleClients
    from prefect_remote.providers.gcp.options import GCPOptions
    from prefect_remote.providers.gcp.records import MachineRecords
    from prefect_remote.software.store import Store
    from prefect_remote.spec import MachineSpec

logger = logging.getLogger("prefect_remote.providers.gcp")

LABEL_PREFIX = "prefect-remote-"  # prefect-remote's own labels (and metadata keys)
LAUNCH_LABEL = LABEL_PREFIX + "launch"
SERVICE_LABEL = LABEL_PREFIX + "service"  # the service's key on every machine it starts: what listing filters on
OWNER_LABEL = LABEL_PREFIX + "owner"
# Whose records know the machine (MachineRecords.label: a digest of the pool's store): on every machine
# and launch secret, so that ending and tidying up leave other pools' alone.
RECORDS_LABEL = LABEL_PREFIX + "records"
MAX_USER_LABELS = 60  # a resource takes 64 labels; prefect-remote's use the rest
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


def label_text(text: str) -> str:
    """``text`` in label characters: lowercase, other characters ``_``, at most 63."""
    return _LABEL_BAD.sub("_", text.lower())[:63]


def label_key(key: str) -> str:
    """``key`` as a GCP label key (:func:`label_text`, starting with a letter), as
    :func:`~prefect_remote.providers.aws.tags.tag_key` maps tags for EC2.

    >>> label_key("prefect.io/flow-run-id")
    'prefect_io_flow-run-id'
    """
    key = label_text(key)
    return (key if key[:1].isalpha() else "t_" + key)[:63]


def label_value(value: str) -> str | None:
    """``value`` when it can be a label value as it is, else None (kept only beside the labels).

    >>> label_value("worker"), label_value("My Cluster")
    ('worker', None)
    """
    return value if _LABEL_VALUE.fullmatch(value) else None


def labels_for(tags: Mapping[str, str]) -> dict[str, str]:
    """The label of each tag whose value can be one."""
    return {label_key(key): value for key, value in tags.items() if label_value(value) is not None}


def owner_labels(owner: str | None) -> dict[str, str]:
    """The owner label of a launch by ``owner`` ("host:pid" is no label value: it is made one), if it has one."""
    return {OWNER_LABEL: label_text(owner)} if owner else {}


class ServiceHost(Protocol):
    """What a service uses of the provider it serves (a :class:`~prefect_remote.providers.gcp.provider.GCPProvider`)."""

    name: ClassVar[str]
    options: GCPOptions

    @property
    def clients(self) -> GoogleClients: ...

    @property
    def records(self) -> MachineRecords: ...

    def runs_inside(self) -> bool: ...

    def machine_store(self) -> Store: ...

    def seen_ended(self, machine_ids: Sequence[str], reason: str) -> None: ...


class GCPService(ABC):
    """One way Google Cloud runs a machine. A service writes only what differs: whether it can serve
    a spec (``unfit``), its shapes and how a machine's log names them (``placement``), starting
    machines, reading them back and ending them."""

    name: ClassVar[str]  # "Cloud Run", "Compute Engine": for logs and errors
    key: ClassVar[str]  # "cloud-run", "compute": its value of the provider's ``service`` option
    id_prefix: ClassVar[str]  # machine ids of this service start with it: "run-", "vm-"
    capabilities: ClassVar[Capabilities]

    def __init__(self, provider: ServiceHost) -> None:
        self.provider = provider

    @property
    def options(self) -> GCPOptions:
        return self.provider.options

    @property
    def clients(self) -> GoogleClients:
        return self.provider.clients

    def labels(self, launch: Launch) -> dict[str, str]:
        """The labels of a machine of ``launch``: each user tag whose value is a label value (none
        under prefect-remote's prefix; every tag, as given, is kept beside the labels), then
        prefect-remote's: this service, the launch, its owner and whose records know it. More than :data:`MAX_USER_LABELS`
        are refused (ValueError)."""
        labels = {key: value for key, value in labels_for(launch.tags).items() if not key.startswith(LABEL_PREFIX)}
        if len(labels) > MAX_USER_LABELS:
            # Refused, not cut short: listing by a tag filters on its label, and would miss the machine.
            raise ValueError(
                f"{len(labels)} tags with label values: {self.name} takes 64 labels on a machine, {MAX_USER_LABELS} of them the "
                "user's (prefect-remote's own take the rest); pass fewer tags, or give the extra ones values that are no label "
                "values (uppercase letters or spaces: they are kept, but not as labels)"
            )
        return {
            **labels,
            SERVICE_LABEL: self.key,
            LAUNCH_LABEL: launch.id,
            **owner_labels(launch.owner),
            RECORDS_LABEL: self.provider.records.label,
        }

    def new_ids(self, count: int) -> list[str]:
        """Ids for ``count`` new machines: ``id_prefix`` and 12 random hex digits."""
        import secrets

        return [f"{self.id_prefix}{secrets.token_hex(6)}" for _ in range(count)]

    def foreign(self, machine_id: str, labels: Mapping[str, str]) -> bool:
        """Whether the machine ``machine_id`` with ``labels`` is another pool's (its records label
        names other records): ending it is refused, with a warning. A machine launched before the
        label has none, and its provider checked that its records know it."""
        theirs = labels.get(RECORDS_LABEL)
        if theirs is None:
            return False
        try:
            ours = self.provider.records.label
        except RemoteError as error:  # no store its machines read (a teardown from a bare shell): no pool to call its own
            logger.warning(
                "gcp: not ending %s (label %s=%s): whose it is cannot be told here: %s", machine_id, RECORDS_LABEL, theirs, error
            )
            return True
        if theirs == ours:
            return False
        logger.warning("gcp: not ending %s: it is another pool's (label %s=%s; this pool's is %s)", machine_id, RECORDS_LABEL, theirs, ours)
        return True

    @abstractmethod
    def unfit(self, spec: MachineSpec) -> str | None:
        """Why this service cannot run ``spec`` (``"12 CPUs exceeds Cloud Run's 8"``), or None if it can."""

    @abstractmethod
    def instance_types(self) -> Sequence[InstanceType]:
        """The shapes it offers, priced."""

    def choose_instance_type(self, spec: MachineSpec) -> InstanceType:
        return pick_instance_type(f"gcp ({self.name})", self.instance_types(), spec)

    @abstractmethod
    def placement(self, instance_type: InstanceType) -> str:
        """Where a machine of ``instance_type`` runs, for its log: ``"Compute Engine e2-standard-4 in us-central1-a"``."""

    @abstractmethod
    def start(self, launch: Launch, machine_ids: Sequence[str]) -> list[Machine]:
        """Starts one machine per id in ``machine_ids`` (made by the provider with ``id_prefix``),
        running ``launch.boot_script``, labelled with the launch's tags and owner. The provider has
        already written their records (fresh leases) and secrets. Starts none if it raises."""

    @abstractmethod
    def machines(self, machine_ids: Sequence[str] | None = None, labels: Mapping[str, str] | None = None) -> list[Machine]:
        """The machines of this service with these ids (None: all) whose labels include ``labels``,
        as the cloud has them now (ended ones it still shows included). Unknown ids are left out."""

    @abstractmethod
    def terminate(self, machine_ids: Sequence[str], reason: str, *, any_pool: bool = False) -> None:
        """Ends these machines (already-ended or unknown ones are fine), only prefect-remote's and,
        unless ``any_pool`` (a project's teardown), only this pool's (:meth:`foreign`)."""
