"""Package sync: capture this environment and this folder's code, then run it on a fresh machine.

    python examples/package_sync.py

The machine rebuilds the environment with uv (or reuses it, if this host built it before), unpacks
the code into its working directory and runs the payload with the rebuilt interpreter.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import prefect_remote
from prefect_remote.providers import get_provider
from prefect_remote.software import capture_environment

PAYLOAD = textwrap.dedent(
    """
    import sys, os, prefect, prefect_remote
    print("interpreter:", sys.executable)
    print("prefect", prefect.__version__, "and prefect-remote", prefect_remote.__version__, "are installed")
    print("code here:", sorted(os.listdir("."))[:6])
    """
)


def main() -> None:
    root = Path(__file__).parent
    env = capture_environment(root=root, check=False)
    summary = env.summary()
    print(f"captured {env.name}: {summary['packages']} packages, {summary['bundle_files']} code files in {env.seconds:.2f}s")
    provider = get_provider()
    [machine] = prefect_remote.launch(["python", "-c", PAYLOAD], software=env.name, cpu=1, memory="1 GiB", keepalive="1 minute")
    [ended] = provider.wait([machine.id], timeout=300)
    print(provider.logs(machine.id).text)
    print(f"machine {machine.id} ended: {ended.reason}")


if __name__ == "__main__":
    main()
