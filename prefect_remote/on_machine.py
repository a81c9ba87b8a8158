"""How code knows it runs on a prefect-remote machine: each machine's monitor or boot sets
``MACHINE_ID_ENV`` to the machine's id for the agent, the payload and everything they start.

Standard library only, and imports nothing of this package: every layer may ask, the boot path
included.
"""

MACHINE_ID_ENV = "PREFECT_REMOTE_MACHINE_ID"
