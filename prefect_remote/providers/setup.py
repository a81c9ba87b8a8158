"""What the clouds' provisioning modules share (``--provision-infra`` and ``teardown``): how each step
is said, how a removal is recorded, and the shape of what provisioning returns.

A provider that sets machines up in an account names its provisioning module in
:attr:`~prefect_remote.providers.base.Provider.infra`; that module's ``provision(provider, pool,
store, say)`` makes or finds what the machines need and returns a :class:`Setup`.

>>> done: list[str] = []
>>> removed(done, "log group /prefect-remote/machines", print)
removed log group /prefect-remote/machines
>>> done
['log group /prefect-remote/machines']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Say = Callable[[str], None]  # prints one step (print, typer.echo, a list's append in tests)


class Setup(Protocol):
    """What ``provision`` made or found for a pool."""

    def block_fields(self) -> dict[str, str | None]:
        """The provider block's fields that record this setup, so that later runs use it (``store``
        among them when one was chosen)."""
        ...


def removed(done: list[str], what: str, say: Say, detail: str = "") -> None:
    """Records ``what`` in ``done`` (what a teardown returns) and says it was removed, with ``detail``."""
    done.append(what)
    say(f"removed {what}{detail}")
