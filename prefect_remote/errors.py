"""Errors users can act on. Each message says what was wrong and how to fix it."""

from __future__ import annotations


class RemoteError(Exception):
    """Base class of prefect-remote's errors."""


class AccessDenied(RemoteError):
    """The cloud refused a call for a missing permission; the message names what grants it. Waiting
    does not fix it (beyond the minutes a new grant takes to reach every server)."""


class CapacityError(RemoteError, ValueError):
    """A provider cannot offer a machine that meets the spec (too big, no such vm_type, no GPU…)."""


class CapabilityError(CapacityError):
    """A provider lacks a capability the request needs (inbound connections, containers, GPUs…)."""


class ProviderNotFound(RemoteError, LookupError):
    """No provider is registered under the name asked for."""


class MachineNotFound(RemoteError, LookupError):
    """No machine has the id asked for."""
