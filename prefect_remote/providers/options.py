"""The base of a provider's options model: keyword arguments of ``get_provider(name, ...)`` and of a
work pool's provider block, each also read from ``PREFECT_REMOTE_<PROVIDER>_<OPTION>`` (or a ``.env``
file). An option given wins over its variable, which wins over its default.

A provider declares its own, with its prefix::

    class MyOptions(ProviderOptions):
        model_config = SettingsConfigDict(env_prefix="PREFECT_REMOTE_MYCLOUD_")

        region: str = "north-1"

    MyOptions.load(region="south-2")      # ProviderOptionsError naming each option it cannot use
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from prefect_remote.errors import RemoteError


class ProviderOptionsError(RemoteError, ValueError):
    """A provider's option (a keyword argument, a provider block's, or its ``PREFECT_REMOTE_<PROVIDER>_*``
    variable) has a value the provider cannot use, or the provider has no such option."""


class ProviderOptions(BaseSettings):
    """A provider's options; a subclass sets ``model_config = SettingsConfigDict(env_prefix=...)``.
    None is secret: they travel to its machines and a cluster's scheduler."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_file=".env")

    @classmethod
    def load(cls, **given: Any) -> Self:
        """The options: ``given``, else the environment, else the defaults. Raises
        :class:`ProviderOptionsError` saying what is wrong with each bad one."""
        try:
            return cls(**given)
        except ValidationError as error:
            raise ProviderOptionsError("; ".join(cls._problem(e) for e in error.errors())) from None

    @classmethod
    def _problem(cls, error: Any) -> str:
        name = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            return f"{name}={error['input']!r}: not an option; options: {', '.join(cls.model_fields)}"
        message = error["msg"].removeprefix("Value error, ")
        if message.startswith(f"{name}="):  # the model's own validators say the option and its value
            return message
        variable = f"{cls.model_config.get('env_prefix', '')}{name}".upper()
        return f"{name} ({variable}): {message}"
