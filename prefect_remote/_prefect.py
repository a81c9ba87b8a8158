"""prefect-remote's registration with Prefect, done by ``import prefect_remote`` when Prefect is
loaded (Prefect imports its collections, ``prefect_remote`` among them, before looking up worker
types, blocks or provisioners): the ``remote`` and ``remote:push`` worker types, the provider block,
the ``--provision-infra`` provisioner and, only inside a Prefect server, the push service.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("prefect_remote")

try:
    from prefect_remote.workers import RemoteProviderBlock, RemotePushWorker, RemoteWorker  # noqa: F401  defining registers
except Exception as error:  # never break Prefect (or `import prefect_remote`) over an integration problem
    logger.warning("prefect-remote: the remote and remote:push worker types are unavailable (%s)", error)

try:
    from prefect_remote.push.provisioner import register_provisioner

    register_provisioner()
except Exception as error:  # private Prefect API: degrade to no --provision-infra, never break Prefect
    logger.warning("prefect-remote: --provision-infra is unavailable with this Prefect version (%s)", error)

if "prefect.server.api.server" in sys.modules:
    try:
        import prefect_remote.push.service  # noqa: F401  registers the perpetual service
    except Exception as error:
        logger.warning(
            "prefect-remote: the in-server push service is unavailable with this Prefect version (%s); "
            "run `prefect-remote push serve` instead",
            error,
        )
