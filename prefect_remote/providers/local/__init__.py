"""The local provider (the default): machines as isolated process trees on this computer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_remote.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]


def __getattr__(name: str) -> Any:
    # Lazy: a machine's agent imports this package's runtime on every boot, without the provider.
    if name == "LocalProvider":
        from prefect_remote.providers.local.provider import LocalProvider

        return LocalProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
