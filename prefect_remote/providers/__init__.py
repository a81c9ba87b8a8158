"""Providers by name: ``local`` (the default), ``aws``, ``gcp``, and any registered by a plugin.

A plugin adds one with an entry point::

    [project.entry-points."prefect_remote.providers"]
    myprovider = "my_package.provider:MyProvider"   # a prefect_remote.providers.base.Provider subclass

>>> get_provider("local").name
'local'
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

from prefect_remote.errors import ProviderNotFound
from prefect_remote.providers.base import BootPayload, Capabilities, InstanceType, LogChunk, Machine, Provider, capability_error

ENTRY_POINT_GROUP = "prefect_remote.providers"

# Built-ins are looked up without scanning entry points: the agent resolves its provider at every boot.
BUILTIN_PROVIDERS = {
    "local": "prefect_remote.providers.local:LocalProvider",
    "aws": "prefect_remote.providers.aws.provider:AWSProvider",
    "gcp": "prefect_remote.providers.gcp.provider:GCPProvider",
}


def available_providers() -> dict[str, str]:
    """Every provider name with the ``module:Class`` it loads."""
    from importlib import metadata  # scanning entry points is slow: only when a name is not built in

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
    """A provider instance: ``name`` or the ``PREFECT_REMOTE_PROVIDER`` setting (default ``local``).
    That provider takes the ``PREFECT_REMOTE_PROVIDER_OPTIONS`` setting's options, under ``options``:
    on a machine they are its launcher's (:meth:`Provider.machine_environ`), so that code there
    launches machines as its launcher did."""
    from prefect_remote.settings import get_settings

    settings = get_settings()
    name = name or settings.provider
    if name == settings.provider:
        options = {**settings.provider_options, **options}
    return provider_class(name)(**options)


def installed_provider_classes() -> dict[str, type[Provider]]:
    """Every installed provider's class by name; a plugin that fails to import is left out (and says
    why when it is asked for by name)."""
    found = {}
    for name in available_providers():
        try:
            found[name] = provider_class(name)
        except Exception:
            continue
    return found


def provider_variables() -> dict[str, str]:
    """The providers' option variables (``PREFECT_REMOTE_AWS_REGION``…) set in this environment, with their values."""
    models = [cls.options_model for cls in installed_provider_classes().values() if cls.options_model is not None]
    prefixes = tuple(str(model.model_config.get("env_prefix", "")).upper() for model in models if model.model_config.get("env_prefix"))
    return {key: value for key, value in os.environ.items() if prefixes and key.upper().startswith(prefixes)}


def require(provider: Provider, capability: str, needed_for: str) -> None:
    """Refuses ``provider`` unless it declares ``capability`` (a :class:`Capabilities` field), saying
    what needs it and which installed providers have it.

    >>> require(get_provider("local"), "inbound_connections", "a Dask cluster needs")
    """
    if getattr(provider.capabilities, capability):
        return
    others = [name for name in sorted(available_providers()) if name != provider.name and _declares(name, capability)]
    instead = f"use a provider that does: {', '.join(others)}" if others else "no installed provider does"
    raise capability_error(provider.name, capability, needed_for, instead)


def _declares(name: str, capability: str) -> bool:
    try:
        return bool(getattr(provider_class(name).capabilities, capability))
    except Exception:  # a plugin that fails to import offers nothing
        return False


__all__ = [
    "BootPayload",
    "Capabilities",
    "InstanceType",
    "LogChunk",
    "Machine",
    "Provider",
    "available_providers",
    "get_provider",
    "installed_provider_classes",
    "provider_class",
    "provider_variables",
    "require",
]
