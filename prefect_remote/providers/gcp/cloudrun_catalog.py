"""Cloud Run's shapes, limits and prices: what a task's container may have (:data:`SHAPES`), what it
costs, the shape that meets a spec (:func:`fit`) and why Cloud Run cannot run one (:func:`refusal`),
and a shape's quantities as the Cloud Run API writes them.

A Cloud Run "instance type" is prefect-remote's name for a cpu/memory pair (``cloud-run-2cpu-8gib``):
Cloud Run has no machine types. Any MiB count in a vCPU count's range is allowed, so a spec gets
exactly the memory it asks for, rounded up to a MiB (Cloud Run bills what is set).

>>> from prefect_remote.spec import MachineSpec
>>> choose(MachineSpec(cpu=2, memory="6 GiB"), "us-central1").describe()
'cloud-run-2cpu-6gib (2 cpu, 6 GiB, x86_64)'
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from prefect_remote.errors import CapacityError
from prefect_remote.providers.base import InstanceType
from prefect_remote.units import format_duration, format_size

if TYPE_CHECKING:
    from prefect_remote.spec import MachineSpec

GIB, MIB = 2**30, 2**20
SHAPE_PREFIX = "cloud-run-"  # every Cloud Run "instance type" name starts so
HOUR = 3600.0
# What a task's container may have: vCPUs -> (least, most) memory. Cloud Run's table for
# instance-based billing (https://cloud.google.com/run/docs/configuring/services/cpu and
# .../memory-limits): 1 vCPU up to 4 GiB, 2 up to 8, 4 from 2 to 16, 6 and 8 from 4 to 24 and 32;
# never under 512 MiB (second-generation environment, which jobs use).
SHAPES: dict[int, tuple[int, int]] = {
    1: (512 * MIB, 4 * GIB),
    2: (512 * MIB, 8 * GIB),
    4: (2 * GIB, 16 * GIB),
    6: (4 * GIB, 24 * GIB),
    8: (4 * GIB, 32 * GIB),
}
# Memory sizes the catalog lists (any MiB count in a CPU's range is allowed; these are the usual ones).
LISTED_MEMORY = (512 * MIB, GIB, 2 * GIB, 4 * GIB, 8 * GIB, 16 * GIB, 24 * GIB, 32 * GIB)
# A task's files live in its memory (Cloud Run has no disk): uv, the agent's environment and a
# software environment take about a GiB, so a spec that names no memory gets 2 GiB.
DEFAULT_MEMORY = 2 * GIB
L4 = "nvidia-l4"
L4_LEAST = (4, 16 * GIB)  # an L4 needs at least 4 vCPU and 16 GiB (https://cloud.google.com/run/docs/configuring/jobs/gpu)
L4_REGIONS = ("asia-south1", "asia-southeast1", "europe-west1", "europe-west4", "us-central1", "us-east4")
# Cloud Run list prices for jobs in tier 1 regions (https://cloud.google.com/run/pricing, "Services
# with CPU always allocated / Jobs"): $0.00001800 per vCPU-second, $0.00000200 per GiB-second, and an
# NVIDIA L4 at $0.0001867 per second (jobs' GPUs are billed at the no-zonal-redundancy rate). Tier 2
# regions cost about 40% more; these are the prices of the sandbox's and most users' regions.
VCPU_HOUR = 0.000018 * HOUR
GIB_HOUR = 0.000002 * HOUR
L4_HOUR = 0.0001867 * HOUR
# Task timeouts: up to 168 hours (over 24 hours is a Preview feature), 1 hour with a GPU.
MAX_TIMEOUT, MAX_GPU_TIMEOUT, GA_TIMEOUT = 168 * HOUR, HOUR, 24 * HOUR
# The agent ends a machine at spec.timeout and records why; Cloud Run's own timeout, a backstop for
# a stalled agent, comes this much later so the agent's reasoned end comes first.
TIMEOUT_GRACE = 300.0
# Without spec.timeout a task may run 24 hours, the longest timeout Cloud Run offers outside Preview:
# longer runs say so with timeout=, and a stalled machine costs a day at most.
DEFAULT_TIMEOUT = GA_TIMEOUT
_MEMORY = re.compile(r"(\d+)(Mi|Gi|M|G)?")


def shape_name(cpu: int, memory: int, gpu: bool = False) -> str:
    """The instance type name of a Cloud Run shape.

    >>> shape_name(2, 8 * GIB), shape_name(1, 1536 * MIB), shape_name(4, 16 * GIB, gpu=True)
    ('cloud-run-2cpu-8gib', 'cloud-run-1cpu-1536mib', 'cloud-run-4cpu-16gib-l4')
    """
    size = f"{memory // GIB}gib" if memory % GIB == 0 else f"{memory // MIB}mib"
    return f"{SHAPE_PREFIX}{cpu}cpu-{size}{'-l4' if gpu else ''}"


def is_shape(instance_type: InstanceType) -> bool:
    """Whether ``instance_type`` is a Cloud Run shape (not a Compute Engine machine type).

    >>> is_shape(shape(2, 8 * GIB)), is_shape(InstanceType("n2-standard-2", 2, 8 * GIB))
    (True, False)
    """
    return instance_type.name.startswith(SHAPE_PREFIX)


def shape(cpu: int, memory: int, gpu: bool = False) -> InstanceType:
    """A Cloud Run shape as an instance type, priced per hour at tier 1 prices.

    >>> shape(1, 2 * GIB).price
    0.0792
    """
    price = cpu * VCPU_HOUR + memory / GIB * GIB_HOUR + (L4_HOUR if gpu else 0.0)
    return InstanceType(shape_name(cpu, memory, gpu), cpu, memory, gpu=int(gpu), gpu_type=L4 if gpu else None, price=round(price, 6))


def catalog() -> list[InstanceType]:
    """The shapes listed for Cloud Run: each vCPU count with the usual memory sizes it allows, and
    the L4 shapes. Choosing a shape is not limited to these (:func:`fit`)."""
    shapes = [shape(cpu, memory) for cpu, (low, high) in SHAPES.items() for memory in LISTED_MEMORY if low <= memory <= high]
    shapes += [
        shape(cpu, memory, gpu=True)
        for cpu, (_, high) in SHAPES.items()
        for memory in LISTED_MEMORY
        if cpu >= L4_LEAST[0] and L4_LEAST[1] <= memory <= high
    ]
    return shapes


def _wants_gpu(spec: MachineSpec) -> bool:
    return spec.gpu is not None


def _memory_wanted(spec: MachineSpec) -> tuple[int, int | None]:
    """The least memory the spec takes and the most (None: no upper bound), Cloud Run's floors applied."""
    least = L4_LEAST[1] if _wants_gpu(spec) else DEFAULT_MEMORY
    if spec.memory is None:
        return least, None
    low, high = spec.memory
    low = max(low, L4_LEAST[1]) if _wants_gpu(spec) else low
    return math.ceil(low / MIB) * MIB, None if high == spec.memory[0] else high  # one value means "at least"


def fit(spec: MachineSpec) -> InstanceType | None:
    """The cheapest Cloud Run shape that meets ``spec``'s cpu, memory and GPU, with exactly the
    memory asked for (rounded up to a MiB; Cloud Run bills what is set), or None.

    >>> from prefect_remote.spec import MachineSpec
    >>> fit(MachineSpec(memory="3 GiB")).name, fit(MachineSpec(cpu=[3, 6], memory="20 GiB")).name
    ('cloud-run-1cpu-3gib', 'cloud-run-6cpu-20gib')
    """
    gpu = _wants_gpu(spec)
    least, most = _memory_wanted(spec)
    for cpu, (low, high) in SHAPES.items():  # fewest vCPUs first: a vCPU costs more than 4 GiB
        if spec.cpu and not spec.cpu[0] <= cpu <= spec.cpu[1]:
            continue
        if gpu and cpu < L4_LEAST[0]:
            continue
        memory = max(least, low)
        if memory > high or (most is not None and memory > most):
            continue
        return shape(cpu, memory, gpu)
    return None


def nearest_shape(spec: MachineSpec) -> tuple[int, int]:
    """The allowed (vCPU, memory) pair nearest to what ``spec`` asks, for error messages: the
    allowed vCPU count nearest the request (the larger on a tie), raised until it takes the memory,
    and the memory brought into that count's range.

    >>> from prefect_remote.spec import MachineSpec
    >>> specs = [MachineSpec(cpu=12), MachineSpec(cpu=1, memory="8 GiB"), MachineSpec(cpu=3)]
    >>> [(cpu, format_size(memory)) for cpu, memory in map(nearest_shape, specs)]
    [(8, '4 GiB'), (2, '8 GiB'), (4, '2 GiB')]
    """
    least, most = _memory_wanted(spec)
    memory = min(max(least if most is None else min(least, most), SHAPES[1][0]), SHAPES[8][1])
    floor = L4_LEAST[0] if _wants_gpu(spec) else 1
    counts = [cpu for cpu in SHAPES if cpu >= floor]
    if spec.cpu:
        inside = [cpu for cpu in counts if spec.cpu[0] <= cpu <= spec.cpu[1]]
        cpu = inside[0] if inside else min(counts, key=lambda c: (min(abs(c - spec.cpu[0]), abs(c - spec.cpu[1])), -c))
    else:
        cpu = counts[0]
    while memory > SHAPES[cpu][1] and cpu != max(SHAPES):
        cpu = next(c for c in SHAPES if c > cpu)
    low, high = SHAPES[cpu]
    return cpu, min(max(memory, low), high)


def asked_shape(spec: MachineSpec) -> str:
    """What the spec asks of cpu and memory, as the user wrote it."""

    def span(values: tuple[int, int] | None, show: Any) -> str | None:
        if values is None:
            return None
        return show(values[0]) if values[0] == values[1] else f"[{show(values[0])}, {show(values[1])}]"

    parts = [f"{name}={text}" for name, text in (("cpu", span(spec.cpu, str)), ("memory", span(spec.memory, format_size))) if text]
    return ", ".join(parts) or "the default shape"


def shape_problem(spec: MachineSpec) -> str:
    """Why no Cloud Run shape meets the spec's cpu and memory, with the nearest one that exists."""
    cpu, memory = nearest_shape(spec)
    nearest = f"the nearest it allows is {cpu} vCPU with {format_size(memory)}"
    if spec.cpu and spec.cpu[0] > max(SHAPES):
        return f"cpu={spec.cpu[0]} is more than Cloud Run's {max(SHAPES)} vCPU; {nearest}"
    if spec.memory and spec.memory[0] > SHAPES[max(SHAPES)][1]:
        return f"memory={format_size(spec.memory[0])} is more than Cloud Run's {format_size(SHAPES[max(SHAPES)][1])}; {nearest}"
    if spec.cpu and not any(spec.cpu[0] <= c <= spec.cpu[1] for c in SHAPES):
        return f"{asked_shape(spec)} is not a shape Cloud Run allows (it offers 1, 2, 4, 6 or 8 vCPU); {nearest}"
    if spec.cpu and spec.cpu[0] == spec.cpu[1] and spec.cpu[0] in SHAPES:
        low, high = SHAPES[spec.cpu[0]]
        return (
            f"{asked_shape(spec)} is not a shape Cloud Run allows ({spec.cpu[0]} vCPU takes {format_size(low)} to "
            f"{format_size(high)}); {nearest}"
        )
    return f"{asked_shape(spec)} is not a shape Cloud Run allows; {nearest}"


def task_timeout(spec: MachineSpec) -> float:
    """Cloud Run's timeout for the task of ``spec`` (seconds): the spec's plus a grace the agent
    uses to end the machine itself, within Cloud Run's limit; 24 hours without one.

    >>> from prefect_remote.spec import MachineSpec
    >>> task_timeout(MachineSpec()), task_timeout(MachineSpec(timeout="2 hours")), task_timeout(MachineSpec(timeout="168 hours"))
    (86400.0, 7500.0, 604800.0)
    """
    limit = MAX_GPU_TIMEOUT if _wants_gpu(spec) else MAX_TIMEOUT
    if spec.timeout is None:
        return min(DEFAULT_TIMEOUT, limit)
    return min(spec.timeout + TIMEOUT_GRACE, limit)


def refusal(spec: MachineSpec, region: str) -> str | None:
    """Why Cloud Run in ``region`` cannot run ``spec`` (what it needs that a task lacks, or the
    nearest shape Cloud Run allows), or None if it can.

    >>> from prefect_remote.spec import MachineSpec
    >>> refusal(MachineSpec(cpu=1, memory="8 GiB"), "us-central1")
    'cpu=1, memory=8 GiB is not a shape Cloud Run allows (1 vCPU takes 512 MiB to 4 GiB); the nearest it allows is 2 vCPU with 8 GiB'
    """
    if spec.inbound:
        return "the machine must accept connections, which Cloud Run jobs do not"
    if spec.arm:
        return "arm=True: Cloud Run runs x86_64 only"
    if spec.spot_policy != "on-demand":
        return f"spot_policy={spec.spot_policy!r}: Cloud Run has no spot capacity"
    if spec.vm_type:
        return f"vm_type={list(spec.vm_type)!r}: Cloud Run has no machine types, only cpu and memory"
    if spec.disk_size:
        return f"disk_size={format_size(spec.disk_size)}: Cloud Run tasks have no disk (their files live in memory)"
    if spec.gpu is not None:
        kind = spec.gpu.type
        if spec.gpu.count != 1 or (kind is not None and ("l4" not in kind or kind not in L4)):
            asked = f"{spec.gpu.count}x {kind or 'gpu'}"
            return f"gpu={asked}: Cloud Run offers one {L4} GPU per task, nothing else"
        if region not in L4_REGIONS:
            return f"gpu={L4}: Cloud Run has no L4 GPUs in {region} (it has them in {', '.join(L4_REGIONS)})"
        if spec.timeout is None or spec.timeout > MAX_GPU_TIMEOUT:
            asked = "no timeout" if spec.timeout is None else f"timeout={format_duration(spec.timeout)}"
            return (
                f"{asked}: a Cloud Run task with a GPU runs at most {format_duration(MAX_GPU_TIMEOUT)}; set timeout='1 "
                "hour' or less for Cloud Run"
            )
        if fit(spec) is None:
            cpu, memory = nearest_shape(spec)
            return (
                f"{asked_shape(spec)} with an {L4}: Cloud Run's L4 needs at least {L4_LEAST[0]} vCPU and "
                f"{format_size(L4_LEAST[1])}; the nearest it allows is {cpu} vCPU with {format_size(memory)}"
            )
    if spec.timeout is not None and spec.timeout > MAX_TIMEOUT:
        return f"timeout={format_duration(spec.timeout)}: a Cloud Run task runs at most {format_duration(MAX_TIMEOUT)}"
    if fit(spec) is None:
        return shape_problem(spec)
    return None


def choose(spec: MachineSpec, region: str) -> InstanceType:
    """The shape for ``spec`` (:func:`fit`); a :class:`CapacityError` saying why none, and the nearest shape."""
    problem = refusal(spec, region)
    chosen = fit(spec) if problem is None else None
    if chosen is None:
        raise CapacityError(f"gcp (Cloud Run): {problem or shape_problem(spec)}")
    return chosen


# -- quantities as the Cloud Run API writes them ----------------------------------------------------
def memory_bytes(text: str) -> int:
    """A Kubernetes-style memory quantity as Cloud Run returns it ("8Gi", "1536Mi") in bytes."""
    found = _MEMORY.fullmatch(text.strip())
    if not found:
        return 0
    unit = {"Gi": GIB, "Mi": MIB, "G": 10**9, "M": 10**6}.get(found.group(2) or "", 1)
    return int(found.group(1)) * unit


def cpus(text: str) -> int:
    """A CPU quantity as Cloud Run returns it ("2", "1000m") in whole vCPUs.

    >>> cpus("2"), cpus("4000m")
    (2, 4)
    """
    try:
        return max(1, round(float(text[:-1]) / 1000 if text.endswith("m") else float(text)))
    except ValueError:
        return 1


def limit_memory(memory: int) -> str:
    """``memory`` bytes as a Cloud Run limit ("8Gi", "1536Mi")."""
    return f"{memory // GIB}Gi" if memory % GIB == 0 else f"{memory // MIB}Mi"
