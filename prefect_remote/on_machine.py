"""How code knows it runs on a prefect-remote machine: each machine's monitor or boot sets
``MACHINE_ID_ENV`` to the machine's id for the agent, the payload and everything they start.

Standard library only, and imports nothing of this package: every layer may ask, the boot path
included.
"""

MACHINE_ID_ENV = "PREFECT_REMOTE_MACHINE_ID"

# The run's secrets that log a machine's container engine in to a private registry: both or neither
# (the machine's own cloud identity logs in to the cloud's registry without them). Kept from the payload.
REGISTRY_USERNAME_ENV = "PREFECT_REMOTE_REGISTRY_USERNAME"
REGISTRY_PASSWORD_ENV = "PREFECT_REMOTE_REGISTRY_PASSWORD"
REGISTRY_SECRETS = (REGISTRY_USERNAME_ENV, REGISTRY_PASSWORD_ENV)
