"""Providers by name: ``local`` (the default), ``aws``, ``gcp``, and any registered by a plugin.

A plugin adds one with an entry point::

    [project.entry-points."prefect_remote.providers"]
    myprovider = "my_package.provider:MyProvider"   # a prefect_remote.providers.base.Provider subclass

>>> get_provider("local").name
'local'
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

from prefect_remote.errors import ProviderNotFound
from prefect_remote.providers.base import BootPayload, InstanceType, LogChunk, Machine, Provider

ENTRY_POINT_GROUP = "prefect_remote.providers"

# Built-ins are looked up without scanning entry points: the agent resolves its provider at every boot.
BUILTIN_PROVIDERS = {
    "local": "prefect_remote.providers.local:LocalProvider",
}


def available_providers() -> dict[str, str]:
    """Every provider name with the ``module:Class`` it loads."""
    plugins = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {**plugins, **BUILTIN_PROVIDERS}


def provider_class(name: str) -> type[Provider]:
    """The :class:`Provider` subclass registered as ``name``."""
    target = BUILTIN_PROVIDERS.get(name) or available_providers().get(name)
    if target is None:
        known = ", ".join(sorted(available_providers()))
        raise ProviderNotFound(
            f"provider={name!r} is not known; available: {known}. "
            f"Install the package that provides it, or register one under the '{ENTRY_POINT_GROUP}' entry point group."
        )
    module, _, attribute = target.partition(":")
    cls = getattr(import_module(module), attribute)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ProviderNotFound(f"provider {name!r} loads {target}, which is not a prefect_remote Provider subclass")
    return cls


def get_provider(name: str | None = None, **options: Any) -> Provider:
    """A provider instance: ``name`` or the ``PREFECT_REMOTE_PROVIDER`` setting (default ``local``)."""
    if name is None:
        from prefect_remote.settings import get_settings

        name = get_settings().provider
    return provider_class(name)(**options)


__all__ = [
    "BootPayload",
    "InstanceType",
    "LogChunk",
    "Machine",
    "Provider",
    "available_providers",
    "get_provider",
    "provider_class",
]
