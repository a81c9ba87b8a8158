"""The monitor of one local machine: what a cloud's hypervisor is to a VM.

``python -m prefect_remote.providers.local.hypervisor MACHINE_DIR`` runs detached from whoever
launched the machine. It sets up the machine's isolation, runs the boot script inside it, stops the
machine on SIGTERM (SIGTERM to every process, SIGKILL after the grace period), and when the boot
script ends, kills what is left, tears the isolation down and records why the machine ended.
Standard library only: it starts on the launch-to-payload path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prefect_remote.machine.container import remove_machine_containers
from prefect_remote.on_machine import MACHINE_ID_ENV
from prefect_remote.providers.local import records
from prefect_remote.providers.local.isolation import (
    OOM_EXIT_CODE,
    Cgroups,
    Network,
    host_engine_env,
    host_trust_env,
    kill_pids,
    record_end,
    tagged_pids,
)
from prefect_remote.providers.local.own_root import IN_ROOT, OwnRoot
from prefect_remote.units import format_size

MACHINE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Hypervisor:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.record = records.read_json(directory / records.MACHINE)
        self.id = self.record["id"]
        self.network = Network(**self.record["network"]) if self.record.get("network") else None
        self.cgroups = Cgroups(self.record["cgroups"]) if self.record.get("cgroups") else None
        self.grace = self.record["grace_period"]
        self.own_root = OwnRoot(**self.record["own_root"]) if self.record.get("own_root") else None
        self.stop_requested = False
        self.powered_off: str | None = None  # the machine's own shutdown, when it asked for one
        self.log = open(directory / records.LOG, "ab", buffering=0)  # noqa: SIM115 (the machine's log, open for the monitor's life)

    def say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.log.write(f"[prefect-remote host] {stamp} {message}\n".encode())

    def machine_env(self) -> dict[str, str]:
        """A fresh environment: nothing of the launcher's but what the boot payload says (and what the
        machine's image sets, for a sandbox cloud's instances). A stock machine's boot gets what
        cloud-init and Google's startup-script runner give theirs: a minimal PATH, and no HOME."""
        if self.record.get("stock_env"):
            return {"PATH": MACHINE_PATH, MACHINE_ID_ENV: self.id, **host_trust_env(), **self.record.get("image_env", {})}
        work = str(self.directory / records.WORK)
        return {
            "PATH": MACHINE_PATH,
            "HOME": work,
            "TMPDIR": work,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            MACHINE_ID_ENV: self.id,
            **host_trust_env(),
            **host_engine_env(),
            **self.record.get("image_env", {}),
        }

    def _enter_cgroups(self) -> None:  # runs in the child, before exec
        if self.cgroups:
            self.cgroups.join()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if (self.directory / records.ENDED).exists():
            return 0  # reclaimed before it started: never boot it
        if (self.directory / records.STOP).exists():
            return self.finish(None, None)  # terminated while launching
        try:
            if self.cgroups:
                limits = self.record["limits"]
                self.cgroups.create(cpu=limits["cpu"], memory=limits["memory"])
            if self.network:
                self.network.create()
        except Exception as error:
            self.say(f"could not set up isolation: {error}")
            return self.finish(None, f"isolation setup failed: {error}")
        command = [*self.network.exec_prefix()] if self.network else []
        if self.own_root:  # a sandbox cloud's instance: its boot runs in its own root's /
            command += self.own_root.command(self.directory, ["bash", f"{IN_ROOT}/boot.sh"])
        else:
            command += ["bash", str(self.directory / records.BOOT_SCRIPT)]
        # A local machine boots in its work folder; a sandbox cloud's instance where its cloud starts
        # a boot script (/ for cloud-init): its boot script must find a work folder of its own.
        boot_folder = self.directory / self.record.get("boot_folder", records.WORK)
        try:
            boot_folder.mkdir(mode=0o700, exist_ok=True)
            if self.own_root:
                self.own_root.prepare(self.directory)
            boot = subprocess.Popen(
                command,
                cwd=boot_folder,
                env=self.machine_env(),
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._enter_cgroups,
            )
        except (OSError, subprocess.SubprocessError) as error:
            self.say(f"could not start the boot script: {error}")
            return self.finish(None, f"boot script could not start: {error}")
        records.write_json(self.directory / records.STATE, {"boot_pid": boot.pid, "started": time.time()})
        stopping_since = None
        # A VM (own root, outlives_boot) stays up after its boot script exits, as an OS outlives its user
        # data script: until it powers itself off (now or as scheduled) or is stopped.
        outlives_boot = bool(self.own_root and self.own_root.outlives_boot)
        said_idle, exited = False, None
        while (code := boot.poll()) is None or (outlives_boot and not self.stop_requested):
            if code is not None and not said_idle:
                said_idle, exited = True, code
                self.say(f"boot script exited with code {code}; the machine stays up until it powers off or is stopped")
            # A stop can be asked for by signal, or by stop.json alone if the signal raced this start.
            self.stop_requested = self.stop_requested or (self.directory / records.STOP).exists()
            if self.own_root and not self.stop_requested and (asked := OwnRoot.power_requested(self.directory)):
                self.powered_off = f"the machine shut itself down ({asked})"
                self.stop_requested = True
            if self.stop_requested and stopping_since is None:
                stopping_since = time.monotonic()
                self.signal_all(boot.pid, signal.SIGTERM)
            if stopping_since is not None and time.monotonic() - stopping_since > self.grace:
                self.signal_all(boot.pid, signal.SIGKILL)
            time.sleep(0.05)
        return self.finish(exited if said_idle else code, None)

    def _on_stop(self, *_) -> None:
        self.stop_requested = True

    def signal_all(self, boot_pid: int, sig: int) -> None:
        try:
            os.killpg(boot_pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        kill_pids(self.machine_pids(), sig)

    def machine_pids(self) -> set[int]:
        pids = tagged_pids(f"{MACHINE_ID_ENV}={self.id}".encode())
        if self.cgroups:
            pids |= self.cgroups.pids()
        if self.network:
            pids |= self.network.pids()
        return pids - {os.getpid()}

    def finish(self, boot_code: int | None, failure: str | None) -> int:
        for _ in range(20):  # leftovers: daemons, children that outlived the boot script
            leftovers = self.machine_pids()
            if not leftovers:
                break
            kill_pids(leftovers, signal.SIGKILL)
            time.sleep(0.05)
        if self.record.get("image"):  # its containers go with it, as with a VM
            remove_machine_containers(self.id)
        reason, exit_code = failure or self.powered_off, None if self.powered_off else boot_code
        if self.cgroups and self.cgroups.oom_kills():
            limit = format_size(self.record["limits"]["memory"])
            reason = f"out of memory: the machine used more than its {limit} limit and the kernel killed the payload"
            exit_code = OOM_EXIT_CODE
        otherwise = "boot script finished" if boot_code == 0 else f"boot script exited with code {boot_code}"
        reason = record_end(self.directory, self.record, reason=reason, exit_code=exit_code, otherwise=otherwise)["reason"]
        self.say(f"machine terminated: {reason}")
        return 0


def main() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # until run() installs its handler: stop.json carries the request
    if len(sys.argv) != 2:
        print("usage: python -m prefect_remote.providers.local.hypervisor MACHINE_DIR", file=sys.stderr)
        return 2
    directory = Path(sys.argv[1])
    try:
        return Hypervisor(directory).run()
    except Exception as error:  # never leave a machine without an end record
        records.write_json(
            directory / records.ENDED, {"reason": f"machine monitor failed: {error!r}", "exit_code": None, "ended": time.time()}
        )
        raise


if __name__ == "__main__":
    sys.exit(main())
