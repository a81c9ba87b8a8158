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

A store provisioning chooses (none given) is the cloud's default bucket's ``store/`` folder, and in
it a folder of the pool's own (:func:`pool_store`): pools never share one unless told to.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Protocol

Say = Callable[[str], None]  # prints one step (print, typer.echo, a list's append in tests)


class Setup(Protocol):
    """What ``provision`` made or found for a pool."""

    def block_fields(self) -> dict[str, str | None]:
        """The provider block's fields that record this setup, so that later runs use it (``store``
        among them when one was chosen)."""
        ...


def pool_key(pool: str) -> str:
    """The folder name of ``pool``'s own store: a slug of its name (what object keys and IAM resource
    patterns take, at most 40 characters) and a hash of the name itself, so that pools whose names
    slug alike ("my pool", "my-pool") differ and no pool's folder begins another's ("ab", "abc").

    >>> pool_key("My Pool")
    'my-pool-4b953553'
    >>> pool_key("ab"), pool_key("abc")
    ('ab-fb8e20fc', 'abc-ba7816bf')
    """
    slug = re.sub(r"[^a-z0-9]+", "-", pool.lower()).strip("-")[:40].strip("-") or "pool"
    return f"{slug}-{hashlib.sha256(pool.encode()).hexdigest()[:8]}"


def pool_store(root: str, pool: str) -> str:
    """``pool``'s own store in the store ``root`` (a URL): a folder of its own, named by :func:`pool_key`.

    >>> pool_store("s3://prefect-remote-123456789012-us-east-2/store/", "ab")
    's3://prefect-remote-123456789012-us-east-2/store/ab-fb8e20fc'
    """
    return f"{root.rstrip('/')}/{pool_key(pool)}"


def owns_store(store: str, pool: str) -> bool:
    """Whether ``store`` is ``pool``'s own default (:func:`pool_store` of a ``store/`` folder), whose
    objects a teardown of that pool removes; a store given by the user is never that.

    >>> owns_store("gs://b/store/ab-fb8e20fc", "ab"), owns_store("gs://b/store/ab-fb8e20fc", "abc"), owns_store("gs://b/envs", "ab")
    (True, False, False)
    """
    return store.rstrip("/").endswith(f"/store/{pool_key(pool)}")


def removed(done: list[str], what: str, say: Say, detail: str = "") -> None:
    """Records ``what`` in ``done`` (what a teardown returns) and says it was removed, with ``detail``."""
    done.append(what)
    say(f"removed {what}{detail}")
