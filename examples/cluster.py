"""RemoteCluster: a Dask cluster whose scheduler and workers are machines (the configured
provider: local by default, EC2 in a shell after `prefect-remote sandbox aws`)."""

from distributed import Client

from prefect_remote import RemoteCluster

if __name__ == "__main__":
    with RemoteCluster(cpu=1, memory="1 GiB", n_workers=[1, 3], keepalive="30 seconds") as cluster:
        print("dashboard:", cluster.dashboard_link)
        with Client(cluster) as client:
            squares = client.map(lambda x: x * x, range(1000))
            print("sum of squares:", client.submit(sum, squares).result())
        print("machines:", ", ".join(f"{m.tags['dask-role']} {m.id} ({m.instance_type})" for m in cluster.machines()))
    print("cluster closed")
