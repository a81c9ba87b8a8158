"""A root file system of its own for a sandbox cloud's instance: what a VM's disk is to it.

The hypervisor starts such an instance's boot inside a mount namespace of its own, where an overlay of
this host's ``/`` (read only, as the image) and the instance's disk folder (its writes) is mounted at
the machine's ``root/`` folder, and then ``chroot``s into it. Whatever the boot writes to ``/`` lands in
the disk folder, never on this host, and stays there across the instance's reboots (the disk folder is
the instance's, not the machine's). The mounts are the namespace's: they vanish with its last process.

The image's ``shutdown``, ``poweroff`` and ``halt`` ask this host's hypervisor to power the machine off
(a file in ``/run/prefect-remote-sandbox/power``), as a VM's own shutdown ends it. ``shutdown`` schedules
as systemd's does: ``shutdown -h +N`` powers off N minutes later (a new call replaces the pending one,
``shutdown -c`` cancels it, no time means ``+1``); ``minute`` is how many seconds a minute lasts there, so
that tests of a scheduled shutdown stay quick (the sandbox's knob, never the product's). With
``outlives_boot`` the machine stays up after its boot script exits, as a VM's OS outlives its user data
script, until something powers it off or stops it. Folders in
``shared`` (a test's scratch folder, a warm uv cache a test asks for) are mounted at the same path, as
a network share would be. Standard library only: the hypervisor uses it on the launch path.

>>> plan = OwnRoot(disk="/tmp/instances/i-1/disk")
>>> plan.command(Path("/tmp/m-1"), ["bash", "/run/prefect-remote-sandbox/boot.sh"])[:3]
['unshare', '--mount', '--propagation']
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

POWER = "power"  # the machine folder's subfolder the image's shutdown writes its request to
POWER_REQUEST = "request"
POWER_SCHEDULED = "scheduled"  # a pending `shutdown +N`: "<epoch seconds it fires at> <its command line>"
IN_ROOT = "/run/prefect-remote-sandbox"  # where the boot script and the power folder are inside the instance

# The image's shutdown: a VM's own shutdown ends the VM; here it asks the hypervisor (which ends every
# process of the machine). It returns at once, as shutdown does. `shutdown [-h|-P|-r] [+N|now] [message]`
# as systemd's: +N schedules (replacing the pending one), -c cancels; poweroff and halt act now.
_SHUTDOWN = f"""#!/bin/sh
# prefect-remote sandbox image: {{name}} powers this machine off (the host's hypervisor ends it)
power={IN_ROOT}/{POWER}
when=now
[ "{{name}}" = shutdown ] && when=1
for arg in "$@"; do
  case "$arg" in
    -c) rm -f "$power/{POWER_SCHEDULED}"; exit 0 ;;
    now) when=0; break ;;
    +[0-9]*) when="${{arg#+}}"; break ;;
    [0-9]*:[0-9]*) echo "{{name}}: this image's shutdown takes +MINUTES or now, not a clock time" >&2; exit 1 ;;
  esac
done
[ "$when" = now ] && when=0
if [ "$when" -eq 0 ]; then
  echo "$0 $*" > "$power/{POWER_REQUEST}"
else
  echo "$(( $(date +%s) + when * {{minute}} )) $0 $*" > "$power/{POWER_SCHEDULED}.new"
  mv "$power/{POWER_SCHEDULED}.new" "$power/{POWER_SCHEDULED}"
  echo "Shutdown scheduled in $when minute(s), use 'shutdown -c' to cancel."
fi
"""

# An image with no container engine (stock Amazon Linux 2023, Debian, Ubuntu): its package manager
# (dnf, apt-get), for the one install the boot asks of it. Theirs download Docker from the distribution's
# repository; this one copies this host's engine (Podman) from the image's "repository" into place, which
# is no download: its time is not a real install's. Anything else it is asked is refused, naming it.
_PACKAGES = f"""#!/bin/sh
# prefect-remote sandbox image with no container engine: `dnf install docker`, `apt-get update` and
# `apt-get install docker.io` only (options ignored)
manager=$(basename "$0")
verb=""
packages=""
for arg in "$@"; do
  case "$arg" in -*) ;; *) if [ -z "$verb" ]; then verb=$arg; else packages="$packages $arg"; fi ;; esac
done
case "$manager $verb$packages" in
  "apt-get update") exit 0 ;;
  "dnf install docker"|"apt-get install docker.io") ;;
  *) echo "$manager (prefect-remote sandbox image): only the install of Docker is modelled, not: $manager $*" >&2; exit 1 ;;
esac
if [ ! -x {IN_ROOT}/repository/podman ]; then
  echo "$manager (prefect-remote sandbox image): no engine in this sandbox's repository (its host has no podman)" >&2
  exit 1
fi
cp {IN_ROOT}/repository/podman /usr/bin/podman
"""

# Run by the hypervisor inside a new mount namespace: $1 the disk folder, $2 the mount point (the
# machine's root/), $3 the machine folder, $4 the shared folders, $5 the volumes (both ":"-separated),
# $6 the package manager of an image without a container engine (dnf, apt-get; else empty), then the
# command.
_ENTER = f"""set -eu
disk=$1 root=$2 machine=$3 shared=$4 volumes=$5 engine=$6
shift 6
mkdir -p "$disk/upper" "$disk/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$disk/upper,workdir=$disk/work" "$root"
# Volumes: folders of the disk itself, mounted as they are (a VM's disk is a real file system; an
# overlay is not one a container engine can keep its layers on, nor make device nodes in).
IFS=:
for volume in $volumes; do
  mkdir -p "$disk/volumes$volume" "$root$volume"
  mount --bind "$disk/volumes$volume" "$root$volume"
done
unset IFS
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
# A VM's /sys/fs/cgroup, which its container engine needs: `ip netns exec` mounted a fresh /sys without
# the host's cgroup file systems, which are mounted again here as the host has them (pid 1's mounts).
while read -r source point type options rest; do
  case "$point" in /sys/fs/cgroup|/sys/fs/cgroup/*) ;; *) continue ;; esac
  grep -q " $root$point " /proc/self/mounts && continue
  mkdir -p "$root$point" 2>/dev/null || true
  mount -t "$type" -o "$options" "$source" "$root$point" 2>/dev/null || true
done < /proc/1/mounts
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mkdir -p "$root{IN_ROOT}/{POWER}"
mount --bind "$machine/{POWER}" "$root{IN_ROOT}/{POWER}"
cp "$machine/boot.sh" "$root{IN_ROOT}/boot.sh"
for name in shutdown poweroff halt; do
  for folder in /usr/sbin /sbin; do
    if [ -d "$root$folder" ] && [ ! -L "$root$folder" ]; then
      rm -f "$root$folder/$name"
      sed "s/{{name}}/$name/g" "$machine/{POWER}.sh" > "$root$folder/$name"
      chmod 755 "$root$folder/$name"
    fi
  done
done
if [ -n "$engine" ]; then
  # The image has no engine: on its first boot its disk hides this host's (whiteouts, kept across
  # reboots, so that an engine installed since stays); its package manager ($engine, in place of any
  # of this host's) installs one from the "repository".
  if [ ! -e "$disk/image-made" ]; then
    for name in podman docker; do
      for folder in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        if [ ! -L "$root$folder" ] && [ -e "$root$folder/$name" ]; then rm -f "$root$folder/$name"; fi
      done
    done
    rm -f "$root/usr/bin/$engine"
    cp "$machine/packages.sh" "$root/usr/bin/$engine"
    chmod 755 "$root/usr/bin/$engine"
  fi
  if host_podman=$(command -v podman); then
    mkdir -p "$root{IN_ROOT}/repository"
    touch "$root{IN_ROOT}/repository/podman"
    mount --bind "$host_podman" "$root{IN_ROOT}/repository/podman"
  fi
fi
touch "$disk/image-made"
IFS=:
for folder in $shared; do
  [ -d "$folder" ] || continue
  mkdir -p "$root$folder"
  mount --bind "$folder" "$root$folder"
done
unset IFS
cd "$root"
exec chroot . "$@"
"""


@dataclass(frozen=True)
class OwnRoot:
    """The plan of an instance's own root: ``disk`` holds what it writes (kept across reboots),
    ``shared`` lists host folders mounted at the same path inside; ``volumes`` lists paths inside whose
    contents live on the disk as a plain folder, not in the overlay (where an engine keeps its layers:
    overlayfs takes no overlay over it); ``minute`` is how many seconds a
    minute of the image's scheduled ``shutdown +N`` lasts; ``outlives_boot``: the machine stays up
    after its boot script exits (a VM), until it powers itself off or is stopped;
    ``engine_installer``: the package manager (``dnf``, ``apt-get``) of an image with no container
    engine (no ``podman`` or ``docker``) until it installs Docker, or None if the image carries one."""

    disk: str
    shared: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    minute: int = 60
    outlives_boot: bool = False
    engine_installer: str | None = None

    def prepare(self, machine: Path) -> None:
        """Writes what entering the root needs into the machine folder (before the boot starts)."""
        (machine / POWER).mkdir(mode=0o700, exist_ok=True)
        (machine / f"{POWER}.sh").write_text(_SHUTDOWN.replace("{minute}", str(int(self.minute))))
        if self.engine_installer:
            (machine / "packages.sh").write_text(_PACKAGES)

    def command(self, machine: Path, boot: list[str]) -> list[str]:
        """The command that runs ``boot`` (paths as inside the root) in the instance's own root."""
        enter = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _ENTER, "enter-root"]
        folders = [":".join(self.shared), ":".join(self.volumes), self.engine_installer or ""]
        return [*enter, self.disk, str(machine / "root"), str(machine), *folders, *boot]

    @staticmethod
    def power_requested(machine: Path) -> str | None:
        """What the machine's own shutdown asked for (its command line), now or by a scheduled time
        that has passed, or None."""
        try:
            return (machine / POWER / POWER_REQUEST).read_text().strip() or "shutdown"
        except FileNotFoundError:
            pass
        try:
            fires, _, asked = (machine / POWER / POWER_SCHEDULED).read_text().strip().partition(" ")
        except FileNotFoundError:
            return None
        return (asked or "shutdown") if fires.isdigit() and int(fires) <= time.time() else None
