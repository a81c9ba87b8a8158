"""Capture the local Python environment as a software environment spec, and store it.

Each installed distribution is classified by its PEP 610 ``direct_url.json``:

* none: an index package, pinned ``name==version``;
* ``vcs_info``: ``name @ git+URL@commit``;
* ``dir_info`` (a local folder, editable or not) or a local archive: built into a wheel with uv
  (cached by the hash of its sources) and stored by hash;
* ``archive_info`` at a remote URL: ``name @ URL``.

Packages that cannot exist on Linux (``appnope``, ``pywin32``, ``pyobjc-*``…) and those in
``ignore`` are dropped and reported. The project's local code is bundled (see :mod:`bundle`). The
environment's name is the hash of all of it: the same environment always gets the same name.
Credentials in index or package URLs are never captured.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from prefect_remote.errors import RemoteError
from prefect_remote.software import bundle as bundles
from prefect_remote.software.naming import env_name
from prefect_remote.software.rebuild import canonical, fetch_requirements, find_uv, index_arguments, packages_named
from prefect_remote.software.scan import DEFAULT_INDEX_VARIABLES, EXTRA_INDEX_VARIABLES, normalize, scan
from prefect_remote.software.secret_files import find_secret_files
from prefect_remote.software.stamps import stamp
from prefect_remote.software.store import Store, sha256_file
from prefect_remote.software.stores import open_store

FORMAT = 1

# Packages that only exist for another operating system, with the system they need.
PLATFORM_ONLY = {
    "appnope": "macOS",
    "pyobjc": "macOS",
    "pyobjc-*": "macOS",
    "tensorflow-macos": "macOS",
    "tensorflow-metal": "macOS",
    "mlx": "macOS",
    "mlx-metal": "macOS",
    "macholib": "macOS",
    "pywin32": "Windows",
    "pywin32-ctypes": "Windows",
    "pypiwin32": "Windows",
    "pywinpty": "Windows",
    "wmi": "Windows",
    "comtypes": "Windows",
    "windows-curses": "Windows",
    "winshell": "Windows",
    "pywin32-stubs": "Windows",
    "wexpect": "Windows",
}


class CaptureError(RemoteError, ValueError):
    """The environment cannot be captured as asked; the message says which package and why."""


class UnresolvableEnvironment(CaptureError):
    """The captured packages do not resolve for the target platform."""


@dataclass(frozen=True)
class CapturedEnvironment:
    """A stored software environment: its name, its spec, and what capture did."""

    name: str
    spec: dict[str, Any]
    store_url: str
    seconds: float
    # The files and folders the capture read (local package sources, local archives, the code, a
    # requirements file) with their (mtime_ns, size) before it read them: while none has changed
    # (and the installed distributions have not), capturing again gives this name.
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    # Code files left out of the bundle because they hold a credential: path -> what it holds.
    left_out: dict[str, str] = field(default_factory=dict)

    @property
    def local_wheels(self) -> int:
        """How many of its packages are wheels built from local sources."""
        return sum(1 for p in self.spec["packages"] if p.get("wheel"))

    def summary(self) -> dict[str, Any]:
        """What the deploy step returns and ``env build`` prints."""
        code = self.spec.get("code") or {}
        return {
            "name": self.name,
            "python": self.spec["python"],
            "platform": self.spec["platform"],
            "packages": len(self.spec["packages"]),
            "local_wheels": self.local_wheels,
            "bundle_files": code.get("files", 0),
            "bundle_size": code.get("size", 0),
            "dropped": [f"{d['name']} ({d['reason']})" for d in self.spec["dropped"]],
            "left_out": [f"{path} ({kind})" for path, kind in sorted(self.left_out.items())],
            "store": self.store_url,
        }


# Query parameters that carry a credential: tokens, keys, passwords, signatures of pre-signed URLs
# (S3's X-Amz-*, GCS's X-Goog-*), named as a whole or as a name's last part (private_token, apiKey);
# not words that merely contain one (author, keyword), whose URL the machine must fetch as it is.
_SECRET_PARAMETER = re.compile(
    r"(token|secret|passw(or)?d|signature|credentials?|key)$|^(auth|authorization|sig|pass)$|^x-amz-|^x-goog-", re.IGNORECASE
)


def strip_credentials(url: str) -> str:
    """``https://user:token@host/path?private_token=t&ref=v1`` → ``https://host/path?ref=v1``:
    credentials (in the user part, or a query parameter named like one) stay on the client. SSH URLs
    keep their user (``git+ssh://git@host``), which is not a secret."""
    parts = urlsplit(url)
    if parts.scheme.split("+")[-1] not in ("http", "https"):
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    given = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(name, value) for name, value in given if not _SECRET_PARAMETER.search(name)]
    query = urlencode(kept) if len(kept) < len(given) else parts.query
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def strip_requirement_credentials(line: str) -> str:
    """The same for a requirement: ``name @ https://u:t@host/x.whl`` or ``git+https://t@host/r``."""
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s;]+", lambda match: strip_credentials(match.group(0)), line)


def _configured_indexes() -> dict[str, Any]:
    """The package indexes pip and uv are configured with here (without credentials)."""
    default = next(filter(None, (os.environ.get(v) for v in DEFAULT_INDEX_VARIABLES)), None)
    extras = " ".join(filter(None, (os.environ.get(v) for v in EXTRA_INDEX_VARIABLES)))
    # UV_INDEX entries may be named: `name=https://...`; the URL is what uv's --extra-index-url takes.
    urls = [entry.split("=", 1)[1] if re.match(r"^[\w.-]+=", entry) else entry for entry in extras.split()]
    return {
        "default": strip_credentials(default) if default else None,
        "extra": [strip_credentials(url) for url in urls],
    }


def _platform_only(name: str) -> str | None:
    return next((system for pattern, system in PLATFORM_ONLY.items() if fnmatch.fnmatch(name, pattern)), None)


def _scan_interpreter(python: str | None) -> dict[str, Any]:
    if python is None or Path(python).absolute() == Path(sys.executable).absolute():
        return scan()
    script = Path(__file__).with_name("scan.py")
    result = subprocess.run([python, "-I", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise CaptureError(f"python={python!r}: could not scan that interpreter's packages: {result.stderr.strip()}")
    return json.loads(result.stdout)


# -- local packages as wheels ---------------------------------------------------------------------


def build_wheel(source: Path, cache_dir: Path, inputs: dict[str, tuple[int, int]] | None = None) -> Path:
    """A wheel of the local project or archive ``source``, built by uv once per state of its files.
    ``SOURCE_DATE_EPOCH`` makes the build reproducible, so the same sources give the same wheel.
    The state of what it read is added to ``inputs``."""
    if source.is_file():
        _record(inputs, source)
        key = sha256_file(source)
    else:
        selection = bundles.select_files(source, exclude=["build/", "dist/"])
        if inputs is not None:
            inputs.update(selection.stamps)
        key = bundles.fingerprint(selection)
    cached = cache_dir / key
    wheels = sorted(cached.glob("*.whl")) if cached.is_dir() else []
    if wheels:
        return wheels[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:  # same filesystem as the cache: the move is a rename
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
        result = subprocess.run(
            [find_uv(), "build", "--wheel", "--quiet", "--out-dir", scratch, str(source)], capture_output=True, text=True, env=env
        )
        built = sorted(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not built:
            raise CaptureError(f"building a wheel of the local package at {source} failed: {result.stderr.strip()[-2000:]}")
        cached.mkdir(parents=True, exist_ok=True)
        target = cached / built[0].name
        os.replace(built[0], target)
        return target


def _local_path(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def _record(inputs: dict[str, tuple[int, int]] | None, path: Path) -> None:
    if inputs is not None and (found := stamp(path)) is not None:
        inputs[str(path.absolute())] = found


# -- classification ---------------------------------------------------------------------------------


def _classify(dist: dict[str, Any], store: Store, wheel_cache: Path, inputs: dict[str, tuple[int, int]]) -> dict[str, Any]:
    name, version, direct = dist["name"], dist["version"], dist["direct_url"]
    entry: dict[str, Any] = {"name": name, "version": version}
    if direct is None:
        return {**entry, "source": "index", "requirement": f"{name}=={version}"}
    url = strip_credentials(direct["url"])
    if "vcs_info" in direct:
        vcs = direct["vcs_info"]
        return {**entry, "source": "vcs", "requirement": f"{name} @ {vcs['vcs']}+{url}@{vcs['commit_id']}"}
    if url.startswith("file:"):
        path = _local_path(url)
        if not path.exists():
            raise CaptureError(f"package {name} was installed from {path}, which no longer exists; reinstall it or pass ignore=[{name!r}]")
        if path.suffix == ".whl":
            _record(inputs, path)
        wheel = path if path.suffix == ".whl" else build_wheel(path, wheel_cache, inputs)
        editable = bool(direct.get("dir_info", {}).get("editable"))
        return {
            **entry,
            "source": "editable" if editable else "local",
            "wheel": {"file": wheel.name, "sha256": store.put_file(wheel)},
        }
    return {**entry, "source": "url", "requirement": f"{name} @ {url}"}


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirements_source(
    path: Path, store: Store, wheel_cache: Path, inputs: dict[str, tuple[int, int]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Packages from a ``uv.lock`` (exported by uv) or a requirements file, as the source of truth."""
    if not path.exists():
        raise CaptureError(f"requirements={str(path)!r}: no such file")
    _record(inputs, path)
    if path.name == "uv.lock":
        result = subprocess.run(
            [find_uv(), "export", "--frozen", "--no-hashes", "--no-header", "--format", "requirements-txt", "--all-extras"],
            cwd=path.parent,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CaptureError(f"requirements={str(path)!r}: uv export failed: {result.stderr.strip()}")
        text = result.stdout
    else:
        text = path.read_text()
    packages, indexes = [], {"default": None, "extra": []}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        option, _, value = line.partition(" ")
        if option in ("--index-url", "-i", "--default-index"):
            indexes["default"] = strip_credentials(value.strip())
        elif option in ("--extra-index-url", "--index"):
            indexes["extra"].append(strip_credentials(value.strip()))
        elif option in ("-e", "--editable"):
            local = (path.parent / value.strip()).resolve() if not value.strip().startswith("file:") else _local_path(value.strip())
            wheel = build_wheel(local, wheel_cache, inputs)
            name = normalize(wheel.name.split("-")[0])
            packages.append(
                {
                    "name": name,
                    "version": wheel.name.split("-")[1],
                    "source": "editable",
                    "wheel": {"file": wheel.name, "sha256": store.put_file(wheel)},
                }
            )
        elif line.startswith("-"):
            raise CaptureError(f"requirements={str(path)!r}: option {option!r} is not supported; use pinned requirements and index options")
        else:
            match = _REQUIREMENT_NAME.match(line)
            if not match:
                raise CaptureError(f"requirements={str(path)!r}: cannot read {raw.strip()!r}")
            packages.append(
                {
                    "name": normalize(match.group(1)),
                    "version": None,
                    "source": "requirements",
                    "requirement": strip_requirement_credentials(line),
                }
            )
    return packages, indexes


# -- the whole capture --------------------------------------------------------------------------------


def capture_environment(
    *,
    root: str | Path = ".",
    python: str | None = None,
    arm: bool = False,
    gpu: bool = False,
    strict: bool = False,
    ignore: list[str] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    requirements: str | Path | None = None,
    check: bool = False,
    store: Store | str | None = None,
    max_bundle_size: int | None = None,
    include_secret_files: bool | None = None,
) -> CapturedEnvironment:
    """Capture this environment (or ``python``'s) and the code under ``root``, store them, and
    return the environment's name.

    ``ignore`` drops packages by name (wildcards allowed); ``include``/``exclude`` choose the
    code files (gitignore patterns; ``.gitignore`` is respected). ``requirements`` (a
    ``requirements.txt`` or ``uv.lock``) replaces the scan of installed packages. With ``strict``,
    a package that cannot exist on Linux is an error instead of being dropped. ``check`` resolves
    the result for the target platform with uv, so a broken environment fails now, not at boot.
    A code file that holds a credential (a private key, a cloud credential file, a kubeconfig; see
    :mod:`.secret_files`) is left out with a :class:`SecretFileLeftOut` warning naming it, unless
    ``include_secret_files`` (default: ``PREFECT_REMOTE_INCLUDE_SECRET_FILES``).

    Example::

        env = capture_environment(ignore=["jupyterlab*"], exclude=["data/"], check=True)
        print(env.name)  # senv-3f2a…
    """
    from prefect_remote.settings import get_settings

    started = time.monotonic()
    if not Path(root).is_dir():
        raise CaptureError(f"root={str(root)!r}: no such folder; give the project folder whose code machines need")
    settings = get_settings()
    store = store if isinstance(store, Store) else open_store(store)
    wheel_cache = settings.home / "cache" / "wheels"
    scanned = _scan_interpreter(python)
    ignored = [normalize(pattern) for pattern in ignore or []]

    def is_ignored(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in ignored)

    inputs: dict[str, tuple[int, int]] = {}
    if requirements is not None:
        packages, indexes = _requirements_source(Path(requirements), store, wheel_cache, inputs)
    else:
        # An ignored package is not classified: a local one is neither built nor required to exist.
        packages = [dist if is_ignored(dist["name"]) else _classify(dist, store, wheel_cache, inputs) for dist in scanned["distributions"]]
        indexes = _configured_indexes()
    kept, dropped = [], []
    for package in packages:
        system = _platform_only(package["name"])
        if system and strict:
            raise CaptureError(
                f"package {package['name']} only exists on {system} and cannot be installed on Linux machines; "
                "uninstall it, pass ignore=[...] or drop strict=True"
            )
        if system:
            dropped.append({"name": package["name"], "reason": f"{system} only"})
        elif is_ignored(package["name"]):
            dropped.append({"name": package["name"], "reason": "ignored"})
        else:
            kept.append(package)
    code = None
    own_folders = [
        f"/{p.relative_to(Path(root).absolute()).as_posix()}/"
        for p in _own_folders(store, settings.home)
        if p.is_relative_to(Path(root).absolute()) and p != Path(root).absolute()
    ]
    selection = bundles.select_files(
        root, include=include, exclude=[*(exclude or []), *own_folders], max_size=max_bundle_size or settings.max_bundle_size
    )
    inputs.update(selection.stamps)
    left_out: dict[str, str] = {}
    if not (settings.include_secret_files if include_secret_files is None else include_secret_files):
        selection, left_out = _leave_out_secret_files(selection, settings.home / "cache" / "secret-files")
    if selection.files:
        code = _store_bundle(selection, store, settings.home / "cache" / "bundles")
    spec = {
        "format": FORMAT,
        "python": scanned["python"],
        "platform": f"linux-{'aarch64' if arm else 'x86_64'}",
        "gpu": gpu,
        "indexes": indexes,
        "packages": sorted(kept, key=lambda p: p["name"]),
        "dropped": sorted(dropped, key=lambda d: d["name"]),
        "code": code,
    }
    if check:
        check_resolves(spec, store)
    data = canonical(spec)
    name = env_name(data)
    store.put_env(name, data)  # last: a stored spec implies its blobs are there
    return CapturedEnvironment(
        name=name, spec=spec, store_url=store.url, seconds=time.monotonic() - started, inputs=inputs, left_out=left_out
    )


class SecretFileLeftOut(UserWarning):
    """A code file holding a credential was left out of the bundle (the warning names it)."""


def _leave_out_secret_files(selection: bundles.Selection, cache_dir: Path) -> tuple[bundles.Selection, dict[str, str]]:
    """``selection`` without the files that hold credentials, each named in a warning; and those files."""
    found = find_secret_files(selection.root, selection.files, selection.stamps, cache_dir)
    for relative, kind in sorted(found.items()):
        warnings.warn(
            f"package sync left {relative} out of the code bundle: it holds a credential ({kind}). Machines get "
            "their credentials from their own identity and secrets, never from your project folder. To ship it anyway: "
            "include_secret_files=True (`prefect-remote env build --include-secret-files`, `include_secret_files: true` "
            "in the build step, or PREFECT_REMOTE_INCLUDE_SECRET_FILES=1).",
            SecretFileLeftOut,
            stacklevel=3,
        )
    return (bundles.without(selection, found) if found else selection), found


def _store_bundle(selection: bundles.Selection, store: Store, cache_dir: Path) -> dict[str, Any]:
    """Archives and stores the selected code, unless these very files were stored before."""
    known_file = cache_dir / f"{bundles.fingerprint(selection)}.json"
    try:
        known = json.loads(known_file.read_text())
        if store.has_blob(known["sha256"]):
            return known
    except (OSError, ValueError, KeyError):
        pass
    with tempfile.TemporaryDirectory() as scratch:
        archive = bundles.write_bundle(selection, Path(scratch) / "code.tar.gz")
        code = {"sha256": store.put_file(archive), "size": selection.size, "files": len(selection.files)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    known_file.write_text(json.dumps(code))
    return code


def _own_folders(store: Store, home: Path) -> list[Path]:
    """prefect-remote's own folders, never part of a code bundle even inside the project."""
    return [Path(p).absolute() for p in (getattr(store, "root", None), home) if p is not None]


def check_resolves(spec: dict[str, Any], store: Store) -> None:
    """Resolves ``spec`` for its target platform with ``uv pip compile``; raises
    :class:`UnresolvableEnvironment` naming the packages that do not resolve."""
    with tempfile.TemporaryDirectory() as scratch:
        requirements = fetch_requirements(spec, store, Path(scratch))
        platform = "aarch64-manylinux_2_28" if spec["platform"].endswith("aarch64") else "x86_64-manylinux_2_28"
        version = ".".join(spec["python"].split(".")[:2])
        result = subprocess.run(
            [
                find_uv(),
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--python-platform",
                platform,
                "--python-version",
                version,
                *index_arguments(spec),
                str(requirements),
            ],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        message = result.stderr.strip()
        named = packages_named(spec, message)
        raise UnresolvableEnvironment(
            f"the environment does not resolve for {spec['platform']} (Python {version})"
            + (f"; check package(s) {', '.join(named)}" if named else "")
            + f". uv says:\n{message}\nFix or uninstall those packages, or pass ignore=[...]."
        )
