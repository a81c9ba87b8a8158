"""The boot script every machine runs, whatever its provider: a cloud VM gets it as user-data, a
local machine runs it in its own process tree.

It gets the agent (:mod:`prefect_remote.machine.agent`) running, which rebuilds the software environment,
runs the payload and ends the machine when its time is up. There are two ways to the agent:

* **From a stock image** (:class:`AgentSource`: clouds). The machine has only its OS. The script
  makes a work folder of its own under the root (a cloud starts it in ``/``), installs a pinned
  ``uv`` (a verified download from the package index), makes the agent's own small environment
  with prefect-remote at the launcher's version (from the index when released, else from a wheel
  the launcher put in the store), then starts the agent there. Each phase is logged with a
  timestamp, so a slow or failed boot says where it stopped. A boot that fails, or whose agent exits
  before its main loop (it writes ``$PREFECT_REMOTE_AGENT_RUNNING`` once there), ends the machine
  (the provider's ``halt`` command): nobody else would. Where the provider has one (``backstop``, e.g.
  ``shutdown -h +{minutes}``), the boot first schedules the machine's own end, which needs no agent
  and no API: the agent pushes it forward while it is healthy, so a machine whose agent dies (killed,
  hung) ends within its keepalive plus one lease interval (rounded up to the minute).
* **Preinstalled** (``python=``: the local provider, whose "image" is this host): the agent runs
  with the launcher's own interpreter at once, in the work folder the machine starts in.

Either way the agent's working folder is the machine's own: the software environment's code is
unpacked there, and the payload runs there.

The agent's configuration (made by :meth:`Provider.agent_config`) travels inside the script, which a
cloud exposes as user-data: secrets never do; the agent reads them through the provider's machine
runtime. Each provider caps the script's size (``Provider.max_boot_script``). Standard library only.

>>> render_boot_script({"command": ["true"]}, python="/usr/bin/python3").startswith("#!/usr/bin/env bash")
True
"""

from __future__ import annotations

import base64
import json
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

AGENT_CONFIG_ENV = "PREFECT_REMOTE_AGENT_CONFIG"
ACTIVITY_FILE_ENV = "PREFECT_REMOTE_ACTIVITY_FILE"
# Where a stock-image machine keeps uv, the agent environment, software environments, uv's cache, managed
# Pythons and its work folders (work/machine-*) (an image may set it; a sandbox gives each of its clouds one).
ROOT_ENV = "PREFECT_REMOTE_ROOT"
DEFAULT_ROOT = "/var/lib/prefect-remote"
# The file a stock-image machine's whole output goes to (boot phases, agent, payload), which the agent
# ships to the provider's log service.
MACHINE_LOG_ENV = "PREFECT_REMOTE_MACHINE_LOG"
DEFAULT_MACHINE_LOG = "/var/log/prefect-remote.log"
# The file the agent creates once its main loop runs (from then on it ends the machine itself); the boot
# script ends a machine whose agent exits without it.
AGENT_RUNNING_ENV = "PREFECT_REMOTE_AGENT_RUNNING"
# The shell command that pushes the machine's scheduled end forward (``shutdown -h +11``): the agent runs
# it every lease interval while the machine is healthy.
BACKSTOP_ENV = "PREFECT_REMOTE_BACKSTOP"
# Without a keepalive, a dead agent's machine ends this long after the agent's last push.
DEFAULT_BACKSTOP = 600.0
# The backstop a boot schedules first lasts at least this long: downloads of uv, Python and the agent.
BOOT_BACKSTOP_MINUTES = 15

# uv, pinned: the version this package is tested with, its wheels on the package index, and their
# SHA-256 (checked on the machine before the binary is used).
UV_VERSION = "0.13.9"
UV_WHEELS = {
    "x86_64": (
        "https://files.pythonhosted.org/packages/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/"
        "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
    ),
    "aarch64": (
        "https://files.pythonhosted.org/packages/57/15/94b6cd62ac3ff6550288328e8035288875197cbc183f51554b266a69877b/"
        "uv-0.13.9-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
        "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
    ),
}


# Seconds each of two looks at the package index may take before a boot says it has no egress (a
# boot with no way out fails within a minute, not after uv's 300 s download timeout).
EGRESS_TIMEOUT = 15

_WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+-]+\.whl")
# A requirement as agent_source makes it (a PEP 508 name, extras and version, or a wheel's name in parentheses):
# only characters a shell does not expand inside double quotes.
_PLAIN_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._,=<>!~()+*\[\]-]*")


@dataclass(frozen=True)
class AgentSource:
    """Where a stock-image machine gets prefect-remote for its agent.

    ``requirement`` is what uv installs (``"prefect-remote[aws]==0.2.0"``); an unreleased version
    names a wheel in the store instead: ``wheel`` is its file name, ``digest`` its SHA-256 in
    ``store``, ``fetch`` the store's own Python lines that copy it to the machine's file ``target``
    (:meth:`~prefect_remote.software.store.Store.machine_fetch`: with the machine's own credentials,
    and the library ``bootstrap`` installs first, e.g. boto3). ``python`` is the launcher's Python
    version, which the machine runs, patch included, where it can be had (else the same minor
    version); ``full`` installs prefect-remote with its dependencies (needed when the payload runs
    in the agent's environment, i.e. without software).

    >>> AgentSource("prefect-remote==0.2.0", python="3.11.7").key
    'prefect-remote==0.2.0-py3.11.7-agent'
    """

    requirement: str
    python: str
    full: bool = False
    extras: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()  # installed first, with dependencies: what the machine side needs
    wheel: str | None = None
    digest: str | None = None
    store: str | None = None
    fetch: str | None = None

    def __post_init__(self) -> None:
        # requirement and key are written into the boot script inside double quotes: nothing a shell expands.
        if not _PLAIN_REQUIREMENT.fullmatch(self.requirement):
            raise ValueError(
                f"AgentSource: requirement {self.requirement!r} holds characters a shell expands; expected e.g. prefect-remote[aws]==0.2.0"
            )
        if self.digest is not None and not re.fullmatch(r"[0-9a-f]{16,64}", self.digest):
            raise ValueError(f"AgentSource: digest {self.digest!r} is not a hexadecimal SHA-256")
        if not re.fullmatch(r"[0-9][0-9.]*", self.python):
            raise ValueError(f"AgentSource: python {self.python!r} is not a version such as 3.11.7")

    @property
    def key(self) -> str:
        """The agent environment's folder name: one per version (or wheel) and kind."""
        version = self.digest[:16] if self.digest else self.requirement.replace("[", "-").replace("]", "").replace(",", "-")
        return f"{version}-py{self.python}-{'full' if self.full else 'agent'}"


_COMMON = """\
#!/usr/bin/env bash
# prefect-remote boot script: the same for every provider (a cloud VM runs it as user-data).
set -euo pipefail
phase() { echo "[prefect-remote boot] $(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) $*"; }
"""

_PREINSTALLED = (
    _COMMON
    + """\
phase "booting machine ${PREFECT_REMOTE_MACHINE_ID:-?} on "@PLACEMENT@

# The agent, preinstalled: it rebuilds the software environment, runs the payload and ends this
# machine on timeout, idleness or a lost owner.
PREFECT_REMOTE_PYTHON=@PYTHON@
export PATH="$(dirname "$PREFECT_REMOTE_PYTHON"):$PATH"
export PREFECT_REMOTE_AGENT_CONFIG=@CONFIG@
exec "$PREFECT_REMOTE_PYTHON" -m prefect_remote.machine.agent
"""
)

_STOCK = (
    _COMMON
    + """\
# A VM's OS outlives this script: a boot that fails before the agent's main loop runs ends the machine
# (powers it off), from its first line on, or nothing would.
PHASE=start
ended() {
  code=$?
  phase "boot failed during '$PHASE' (exit $code); ending this machine"
  # Once the agent is installed (and until it starts), it ends the machine as its owner would see it:
  # this reason recorded, this log shipped; the halt after it ends the machine if that fails.
  if [ -n "${AGENT_ENDS:-}" ]; then
    timeout 180 "$AGENT/bin/python" -m prefect_remote.machine.agent \
      --end "boot failed during '$PHASE' (exit $code)" || true
  fi
  @HALT@
  exit "$code"
}
trap ended EXIT
export PREFECT_REMOTE_AGENT_CONFIG=@CONFIG@  # (the trap's too: it may end the machine through the agent)
ROOT="${PREFECT_REMOTE_ROOT:-@DEFAULT_ROOT@}"
export PREFECT_REMOTE_ROOT="$ROOT" UV_CACHE_DIR="${UV_CACHE_DIR:-$ROOT/uv-cache}"
export UV_PYTHON_INSTALL_DIR="${UV_PYTHON_INSTALL_DIR:-$ROOT/python}"  # Pythons uv downloads
# Eight downloads at a time, not uv's 50: a cluster's workers boot together behind one NAT, proxy or
# package mirror, which admit only so many connections (a mirror throttles, a proxy queues).
export UV_CONCURRENT_DOWNLOADS="${UV_CONCURRENT_DOWNLOADS:-8}"
export PREFECT_REMOTE_MACHINE_LOG="${PREFECT_REMOTE_MACHINE_LOG:-@DEFAULT_LOG@}"
mkdir -p "$ROOT" "$(dirname "$PREFECT_REMOTE_MACHINE_LOG")"
# The payload's output: its owner's only (root's umask would make it world-readable).
( umask 077 && touch "$PREFECT_REMOTE_MACHINE_LOG" ) && chmod 600 "$PREFECT_REMOTE_MACHINE_LOG"
exec > >(tee -a "$PREFECT_REMOTE_MACHINE_LOG") 2>&1
phase "booting machine on "@PLACEMENT@" ($(uname -m))"

# The backstop, which needs no agent and no API: this machine ends itself at a scheduled time unless the
# agent, once running, keeps pushing it forward (a new schedule replaces the pending one).
PHASE=backstop
@BACKSTOP@

# A cloud that does not run this script on a reboot (EC2 runs user data on the first boot only)
# would leave a rebooted machine running with no agent: the provider's hook ends it then.
PHASE=reboot-hook
@ON_REBOOT@

# 0. A work folder of its own. cloud-init and Google's startup-script runner start this script in /
# (maybe without HOME): the agent unpacks the code bundle into its working folder, and the payload
# runs there.
PHASE=workdir
export HOME="${HOME:-$(echo ~)}"  # unset: the passwd entry's, as a login shell would have it
mkdir -p "$ROOT/work"
WORK="$(mktemp -d "$ROOT/work/machine-XXXXXXXX")"  # one per boot: a root an image or a sandbox shares is never mixed
cd "$WORK"
phase "work folder: $WORK"

# The GPU driver, where the image has one (a GPU machine boots AWS's Deep Learning Base AMI or Google's
# Deep Learning VM, which ship NVIDIA's): what it sees, logged; a failing check is logged, not fatal.
if command -v nvidia-smi >/dev/null 2>&1; then
  PHASE=gpu
  phase "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | paste -sd ';' - || true)"
  # Podman gives a container the GPUs as a CDI device, whose spec NVIDIA's toolkit writes (Docker asks the toolkit itself).
  if command -v podman >/dev/null 2>&1 && command -v nvidia-ctk >/dev/null 2>&1 && [ ! -e /etc/cdi/nvidia.yaml ]; then
    nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml >/dev/null 2>&1 || phase "gpu: no CDI spec: containers get no GPU"
  fi
fi

# 1. Egress. A new machine downloads uv, Python and the agent from the package index: in a network with
# no way out (a private subnet without NAT) each download would hang for minutes. Say so at once.
PHASE=egress
# (An image with no python3 is refused below, by name.)
if command -v python3 >/dev/null 2>&1 && { [ ! -x "$ROOT/uv-@UV_VERSION@/uv" ] || [ ! -x "$ROOT/agent/@AGENT_KEY@/bin/python" ]; }; then
  python3 - <<'PY'
import platform, sys, urllib.error, urllib.request
wheels = @UV_WHEELS@
url = wheels[{"arm64": "aarch64"}.get(platform.machine(), platform.machine())][0]
for attempt in range(2):
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=@EGRESS_TIMEOUT@).close()
        sys.exit(0)
    except urllib.error.HTTPError:  # an answer: the index is reachable
        sys.exit(0)
    except Exception as error:
        problem = error
sys.exit(
    f"no route to the package index ({url.split('/')[2]}: {problem}): this machine has no egress to the internet. "
    "Give its network a way out: on AWS a public IP (a subnet that maps one, with a route to an internet gateway) "
    "or a NAT gateway, and VPC endpoints for S3 (the store); on GCP an external IP or Cloud NAT, and Private "
    "Google Access (the store)"
)
PY
  phase "egress: the package index answers"
fi

# 2. uv, pinned and verified.
PHASE=uv
UV_DIR="$ROOT/uv-@UV_VERSION@"
if [ ! -x "$UV_DIR/uv" ]; then
  phase "uv: installing uv @UV_VERSION@"
  if ! command -v python3 >/dev/null 2>&1; then  # the one thing the boot needs of the image
    phase "uv: this image has no python3 to fetch uv with; boot an image that has Python 3 (ami, vm_image)"
    exit 127
  fi
  python3 - "$UV_DIR" <<'PY'
import hashlib, os, platform, sys, tempfile, urllib.request, zipfile
wheels = @UV_WHEELS@
url, digest = wheels[{"arm64": "aarch64"}.get(platform.machine(), platform.machine())]
data = urllib.request.urlopen(url, timeout=300).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit(f"uv download from {url} does not match its pinned SHA-256")
target = sys.argv[1]
os.makedirs(os.path.dirname(target), exist_ok=True)
scratch = tempfile.mkdtemp(dir=os.path.dirname(target))
with tempfile.TemporaryFile() as wheel:
    wheel.write(data)
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith("/scripts/uv"))
        with open(os.path.join(scratch, "uv"), "wb") as binary:
            binary.write(archive.read(member))
os.chmod(os.path.join(scratch, "uv"), 0o755)
try:
    os.rename(scratch, target)
except OSError:  # another machine sharing this root put it there first
    pass
PY
fi
UV="$UV_DIR/uv"
export PATH="$UV_DIR:$PATH"
phase "uv: $("$UV" --version)"

# 3. The agent's own environment: prefect-remote at the launcher's version, on the launcher's Python
# (patch included) where uv has or can download it, else at once the same minor version.
PHASE=agent
AGENT="$ROOT/agent/@AGENT_KEY@"
if [ ! -x "$AGENT/bin/python" ]; then
  phase "agent: installing @AGENT_REQUIREMENT@"
  mkdir -p "$ROOT/agent"
  BUILD="$(mktemp -d "$AGENT.XXXXXX")"
  if ! WHY="$(UV_HTTP_RETRIES=0 "$UV" venv --quiet --python @AGENT_PYTHON@ "$BUILD" 2>&1)"; then
    WHY="${WHY##*$'\\n'}"; WHY="${WHY#"${WHY%%[! ]*}"}"  # uv's innermost cause, without its indent and label
    phase "agent: no Python @AGENT_PYTHON@ here or to download (${WHY#cause: }); the same minor version instead"
    "$UV" venv --quiet --python @AGENT_MINOR@ "$BUILD"
  fi
@BOOTSTRAP@@FETCH_WHEEL@
  "$UV" pip install --quiet --python "$BUILD/bin/python" @INSTALL_OPTIONS@ @INSTALL@
  if ! mv -T "$BUILD" "$AGENT" 2>/dev/null; then rm -rf "$BUILD"; fi  # another machine sharing this root won
fi
READY="$("$AGENT/bin/python" -c 'import platform, prefect_remote as p; print(p.__version__, "on Python", platform.python_version())')"
phase "agent: ready ($READY)"
AGENT_ENDS=1
@AGENT_PATH@@ENGINE@
# 4-5. The agent rebuilds the software environment, runs the payload, and ends this machine on
# timeout, idleness or a lost owner.
# Until the agent says its main loop runs, any exit of it (its runtime, metadata or secrets unreadable,
# an import error) ends this machine through the trap: from then on the agent ends it itself.
PHASE="agent start (the agent exited before its main loop)"
AGENT_ENDS=""  # it ends the machine itself, or failed in a way a second start would fail again
export PREFECT_REMOTE_AGENT_RUNNING="$WORK/.prefect-remote-agent-running"
phase "agent: starting"
code=0
"$AGENT/bin/python" -m prefect_remote.machine.agent || code=$?
if [ -e "$PREFECT_REMOTE_AGENT_RUNNING" ]; then
  trap - EXIT
  phase "agent: exited with code $code"
  exit "$code"
fi
(exit "$(( code == 0 ? 1 : code ))")
"""
)

# A container engine for image=: the image's own (Podman, or a Docker whose daemon answers or starts),
# else Docker installed now from the OS's packages (AL2023: dnf; Debian: apt-get), its time logged. The
# agent pulls and runs the image (prefect_remote.machine.container). The ECS-optimized AMI (EC2's default
# for image=) carries Docker, and an ECS agent that is turned off: it would register the machine with an
# ECS cluster ("default") once the user data has run, which is neither asked nor granted.
_ENGINE = """
PHASE=engine
# (as prefect_remote.machine.container.find_engine: an engine that answers)
engine_answers() { podman version >/dev/null 2>&1 || docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if command -v systemctl >/dev/null 2>&1 && systemctl cat ecs.service >/dev/null 2>&1; then
  systemctl disable --now --no-block ecs.service >/dev/null 2>&1 || true
  phase "engine: this image's ECS agent turned off (this machine runs the image itself)"
fi
if ! engine_answers && command -v dockerd >/dev/null 2>&1; then  # Docker here, its daemon not started yet
  STARTED=$SECONDS
  systemctl start docker 2>/dev/null || service docker start >/dev/null 2>&1 || true
  for _ in $(seq 30); do engine_answers && break; sleep 1; done
  if engine_answers; then phase "engine: this image's Docker started in $(( SECONDS - STARTED )) s"; fi
fi
if ! engine_answers; then
  PODMAN_SAYS=""  # why a Podman that is here does not answer: its last line
  if command -v podman >/dev/null 2>&1; then PODMAN_SAYS="$(podman version 2>&1 || true)"; PODMAN_SAYS="${PODMAN_SAYS##*$'\\n'}"; fi
  phase "engine: no Podman or Docker that answers on this image${PODMAN_SAYS:+ (podman: $PODMAN_SAYS)}; installing Docker"
  STARTED=$SECONDS
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y -q docker >/dev/null
  elif command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  else
    phase "engine: neither dnf nor apt-get here to install Docker with; boot an image with Podman or Docker (ami, vm_image)"
    exit 127
  fi
  systemctl start docker 2>/dev/null || service docker start >/dev/null 2>&1 || true
  for _ in $(seq 60); do engine_answers && break; sleep 1; done
  if ! engine_answers; then
    phase "engine: Docker installed, but its daemon did not answer within 60 s; boot an image with Podman or Docker (ami, vm_image)"
    exit 1
  fi
  phase "engine: Docker installed and started in $(( SECONDS - STARTED )) s"
fi
phase "engine: $(if podman version >/dev/null 2>&1; then podman --version; else docker --version; fi)"
"""

# Fetches the agent's wheel from the store with the machine's own credentials (the store's own
# lines, AgentSource.fetch: it alone knows how its objects are read), verified.
_FETCH_WHEEL = """\
  "$BUILD/bin/python" - @STORE@ @DIGEST@ "$BUILD/@WHEEL@" <<'PY'
import hashlib, sys
store, digest, target = sys.argv[1:]
@FETCH@
with open(target, "rb") as wheel:
    if hashlib.sha256(wheel.read()).hexdigest() != digest:
        sys.exit(f"the agent wheel {digest[:12]} in {store} does not match its SHA-256")
PY
"""


def render_boot_script(
    config: dict[str, Any],
    *,
    python: str | None = None,
    agent: AgentSource | None = None,
    halt: str = "true",
    backstop: str | None = None,
    on_reboot: str = "",
    placement: str = "a machine",
) -> str:
    """The boot script for an agent ``config``: the agent runs with the interpreter at ``python``
    (preinstalled), or in an environment the script makes from ``agent`` (stock image), where a
    failed boot runs ``halt`` (a shell command that ends the machine) and the boot first runs
    ``on_reboot`` (shell lines that make a later boot of the machine end it, where its cloud would
    not run this script again). ``backstop`` (a shell command with ``{minutes}``, e.g. ``"shutdown -h
    +{minutes}"``) schedules the machine's own end: at boot for at least ``BOOT_BACKSTOP_MINUTES``,
    then pushed forward by the agent to its keepalive (else ``DEFAULT_BACKSTOP``) plus one lease
    interval. ``placement`` says where the machine runs (``"aws EC2 t3.medium in us-east-1"``), for
    the log's first line."""
    encoded = base64.b64encode(json.dumps(config, separators=(",", ":")).encode()).decode()
    where = shlex.quote(" ".join(placement.split()))  # one line, literal text whatever it holds
    if agent is None:
        if python is None:
            raise ValueError("render_boot_script: give python= (preinstalled agent) or agent= (stock image)")
        return _PREINSTALLED.replace("@PYTHON@", shlex.quote(python)).replace("@CONFIG@", encoded).replace("@PLACEMENT@", where)
    extras = f"[{','.join(agent.extras)}]" if agent.extras else ""
    bootstrap = ""
    if agent.bootstrap:
        bootstrap = f'  "$UV" pip install --quiet --python "$BUILD/bin/python" {" ".join(map(shlex.quote, agent.bootstrap))}\n'
    if agent.wheel:
        if not _WHEEL_NAME.fullmatch(agent.wheel) or not all(_WHEEL_NAME.fullmatch(f"{extra}.whl") for extra in agent.extras):
            raise ValueError(f"AgentSource: {agent.wheel!r} {agent.extras!r} is not a plain wheel file name and extras")
        if not agent.fetch:
            raise ValueError(f"AgentSource: the wheel {agent.wheel!r} needs its store's fetch lines (Store.machine_fetch)")
        fetch = _FETCH_WHEEL.replace("@STORE@", shlex.quote(agent.store or "")).replace("@DIGEST@", shlex.quote(agent.digest or ""))
        fetch = fetch.replace("@WHEEL@", agent.wheel).replace("@FETCH@", agent.fetch.rstrip("\n"))  # last: the store's text
        install = f'"prefect-remote{extras} @ file://$BUILD/{agent.wheel}"'  # $BUILD expands on the machine
    else:
        fetch = ""
        install = shlex.quote(agent.requirement)
    replacements = {
        "@BACKSTOP@": _backstop_lines(config, backstop),
        "@DEFAULT_ROOT@": DEFAULT_ROOT,
        "@DEFAULT_LOG@": DEFAULT_MACHINE_LOG,
        "@HALT@": halt,
        "@ON_REBOOT@": on_reboot.rstrip("\n") or ":",
        "@UV_VERSION@": UV_VERSION,
        "@UV_WHEELS@": repr(UV_WHEELS),
        "@EGRESS_TIMEOUT@": str(EGRESS_TIMEOUT),
        "@AGENT_KEY@": agent.key,
        "@AGENT_REQUIREMENT@": agent.requirement,
        "@AGENT_PYTHON@": shlex.quote(agent.python),
        "@AGENT_MINOR@": shlex.quote(".".join(agent.python.split(".")[:2])),
        "@BOOTSTRAP@": bootstrap,
        "@FETCH_WHEEL@": fetch,
        "@INSTALL_OPTIONS@": "" if agent.full else "--no-deps",
        "@INSTALL@": install,
        # A payload with neither a software environment nor an image runs in the agent's (then a full one);
        # in an image (Cloud Run boots in it), `python` is the image's.
        "@AGENT_PATH@": 'export PATH="$AGENT/bin:$PATH"\n' if agent.full else "",
        "@ENGINE@": _ENGINE if config.get("image") else "",
        "@CONFIG@": encoded,
        "@PLACEMENT@": where,  # last: the provider's text is not searched for placeholders
    }
    script = _STOCK
    for placeholder, value in replacements.items():
        script = script.replace(placeholder, value)
    return script


def backstop_minutes(config: dict[str, Any]) -> int:
    """Minutes the agent's push schedules the machine's end for: its keepalive (else
    ``DEFAULT_BACKSTOP``) plus one lease interval, rounded up to the minute (``shutdown``'s unit).

    >>> backstop_minutes({"keepalive": 600, "lease_interval": 30})
    11
    """
    seconds = (config.get("keepalive") or DEFAULT_BACKSTOP) + (config.get("lease_interval") or 0)
    return max(1, math.ceil(seconds / 60))


def _backstop_lines(config: dict[str, Any], backstop: str | None) -> str:
    if not backstop:
        return ":"
    at_boot = backstop.replace("{minutes}", str(max(backstop_minutes(config), BOOT_BACKSTOP_MINUTES)))
    pushed = backstop.replace("{minutes}", str(backstop_minutes(config)))
    return (
        f'if SAID="$({{ {at_boot}; }} 2>&1)"; then phase "backstop: scheduled ({at_boot})${{SAID:+: $SAID}}"\n'
        f'else phase "backstop: could not schedule ({at_boot}): $SAID"; fi\n'
        f"export {BACKSTOP_ENV}={shlex.quote(pushed)}"
    )


def decode_agent_config(encoded: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(encoded))
