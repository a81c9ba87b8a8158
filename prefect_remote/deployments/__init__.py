"""Prefect deployment steps (``prefect_remote.deployments.steps``) for prefect.yaml."""
