"""The sandbox GCP's Compute Engine v1: a small stateful fake of the REST API as
``google.cloud.compute_v1`` calls it (``/compute/v1/projects/…``, camelCase JSON, ``kind``,
``selfLink``, ids as strings of digits), whose instances run as local machines.

It serves, one module per resource:

* :mod:`~prefect_remote.sandbox.gcp.compute.catalog`: zones, the region and its quotas, machine
  types, accelerator types and public images;
* :mod:`~prefect_remote.sandbox.gcp.compute.instances`: instances (insert, get, list and
  aggregatedList with Google's filters, delete, stop, setLabels, setMetadata with fingerprints) and
  :class:`ComputeFake`, which serves all of them; what an insert may ask for is in
  :mod:`~prefect_remote.sandbox.gcp.compute.insert`;
* :mod:`~prefect_remote.sandbox.gcp.compute.network`: the default network and subnetwork, and
  firewalls;
* :mod:`~prefect_remote.sandbox.gcp.compute.operations`: zone and global operations, every one
  answered ``DONE``;

following Compute Engine's conventions (:mod:`~prefect_remote.sandbox.gcp.compute.google`:
timestamps printed in Pacific time, ``…-08:00``, its errors, pages and filters).

>>> compute = ComputeFake(sandbox)                                              # doctest: +SKIP
>>> client = compute_v1.InstancesClient(client_options={"api_endpoint": sandbox.api.url})  # doctest: +SKIP
>>> client.insert(project=sandbox.project, zone=sandbox.zones[0], instance_resource=vm).result()  # doctest: +SKIP
"""

from prefect_remote.sandbox.gcp.compute.instances import ComputeFake

__all__ = ["ComputeFake"]
