"""What runs on a machine, whatever its provider: the other side of the launcher.

- :mod:`~prefect_remote.machine.boot`: the boot script every machine runs (rendered by the launcher,
  run by the machine) and the agent's configuration inside it;
- :mod:`~prefect_remote.machine.agent`: the on-machine agent, ``python -m prefect_remote.machine.agent``;
- :mod:`~prefect_remote.machine.runtime`: :class:`~prefect_remote.machine.runtime.MachineRuntime`,
  a provider's machine side as the agent uses it;
- :mod:`~prefect_remote.machine.logship`: shipping the machine log to a cloud's log service.

Each cloud's own runtime, and the machine-side halves of its protocols (lease, secrets, logs), sit
in that cloud's folder under :mod:`prefect_remote.providers`, beside their client-side halves, so
that a cloud is one folder.

Standard library only at import, here and in every provider's runtime: the agent imports them on
every machine boot, before the payload starts (tests/machine/test_imports.py checks it).
"""
