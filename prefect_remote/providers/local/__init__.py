"""The local provider (the default): machines as isolated process trees on this computer."""

from prefect_remote.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
