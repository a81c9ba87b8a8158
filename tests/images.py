"""Container images for tests on this host, made offline (no registry to pull from, no Docker Hub).

The session's engine configuration (:func:`engine_conf`, a ``containers.conf`` named by
``CONTAINERS_CONF`` in tests/conftest.py) is what this host needs of Podman (runc, ulimits within the
host's hard limits) plus two read-only mounts: this interpreter's base prefix and this checkout (with
its ``.venv``). So a test image (:func:`import_test_image`) is only a root filesystem of a few MB: the C
libraries this interpreter and its extension modules link to, and the files a test gives, imported
with ``podman import``. In it, ``sys.executable`` runs with this checkout's packages, Prefect's too.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGE = "localhost/prefect-remote-test"


def engine_conf(path: Path) -> Path:
    """Writes the session's ``containers.conf`` at ``path``."""
    mounts = [f"{folder}:{folder}:ro" for folder in (Path(sys.base_prefix).resolve(), REPO)]
    path.write_text(
        f'[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\nvolumes = {mounts!r}\n'.replace("'", '"') + "[engine]\n"
        'runtime = "runc"\n'
    )
    return path


def _linked_libraries() -> list[Path]:
    """The host's shared libraries this interpreter and the extension modules of its environment load."""
    objects = [Path(sys.executable).resolve()]
    for root in (Path(sys.base_prefix) / "lib", Path(sys.prefix) / "lib"):
        objects += [path for path in root.rglob("*.so*") if path.is_file()]
    found = subprocess.run(["ldd", *map(str, objects)], capture_output=True, text=True).stdout
    libraries = {Path(part.split()[0]) for part in found.split("=> ")[1:] if part.startswith("/")}
    loader = next(Path(line.split()[0]) for line in found.splitlines() if "ld-linux" in line and line.strip().startswith("/"))
    inside = (str(REPO), sys.base_prefix)
    return sorted(path for path in libraries | {loader} if not str(path).startswith(inside))


def import_test_image(
    files: dict[str, str],
    tag: str | None = None,
    *,
    folders: dict[str, Path] | None = None,
    path: str | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    """A local image (``localhost/prefect-remote-test:<tag>``) of a root filesystem with this interpreter's
    C libraries, ``files`` ({absolute path: text}) and ``folders`` ({absolute path: a folder here, copied});
    the same files and environment make the same tag, imported once (give a ``tag`` of your own with ``folders``).
    ``path``: the image's ``PATH`` (default: this interpreter's folder, then ``/usr/bin``); ``environ``:
    more of its environment."""
    path = path or f"{Path(sys.executable).parent}:/usr/bin"
    # (the PATH is part of the tag: this interpreter's folder differs between checkouts sharing the engine)
    tag = tag or hashlib.sha256(repr([sorted(files.items()), path, sorted((environ or {}).items())]).encode()).hexdigest()[:12]
    image = f"{TEST_IMAGE}:{tag}"
    podman = shutil.which("podman")
    assert podman, "podman is needed for the image tests (apt-get install podman runc)"
    if subprocess.run([podman, "image", "exists", image]).returncode == 0:
        return image
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for folder in ("etc", "tmp", "root", "proc", "sys", "dev", "run", "usr/bin"):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(entry)
        for name, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/bin")):
            entry = tarfile.TarInfo(name)
            entry.type, entry.linkname = tarfile.SYMTYPE, target
            tar.addfile(entry)
        for library in _linked_libraries():
            inside = str(library.relative_to("/"))
            tar.add(library.resolve(), arcname=inside if inside.startswith("usr/") else f"usr/{inside}")  # /lib is usr/lib
        for name, text in files.items():
            data = text.encode()
            entry = tarfile.TarInfo(name.lstrip("/"))
            entry.size, entry.mode = len(data), 0o644
            tar.addfile(entry, io.BytesIO(data))
        for inside, folder in (folders or {}).items():
            tar.add(folder, arcname=inside.lstrip("/"))
    changes = [
        f"ENV {name}={value}" for name, value in {"PATH": path or f"{Path(sys.executable).parent}:/usr/bin", **(environ or {})}.items()
    ]
    options = [f"--change={change}" for change in changes]
    subprocess.run([podman, "import", *options, "-", image], input=archive.getvalue(), check=True, capture_output=True)
    return image


DASK_PREFIX = "/opt/dask"  # where a Dask image (import_dask_image) has its Python environment
DASK_IMAGE_CODE = "/opt/app"  # and its own code, on its PYTHONPATH: a module ``in_the_image``
IN_THE_IMAGE = "def double(x):\n    return 2 * x\n"


def import_dask_image(distributed: str) -> str:
    """A Dask image as a user's might be: a Python environment at :data:`DASK_PREFIX` (first on
    ``PATH``) with ``distributed==<distributed>`` and its dependencies only (uv, from the package
    index), on this interpreter's Python (mounted in by the session's engine configuration), its own
    module ``in_the_image`` (``double(x)``) on its ``PYTHONPATH``, and no prefect-remote. Imported
    once per version (a test's fixture removes it)."""
    tag = f"dask-{distributed}"
    if subprocess.run([shutil.which("podman") or "podman", "image", "exists", f"{TEST_IMAGE}:{tag}"]).returncode == 0:
        return f"{TEST_IMAGE}:{tag}"
    uv = Path(sys.executable).parent / "uv"
    with tempfile.TemporaryDirectory() as folder:
        venv = Path(folder) / "dask"
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, venv], check=True)
        subprocess.run(
            # (cloudpickle as here: Dask's own version check would warn of it otherwise)
            [uv, "pip", "install", "--quiet", f"distributed=={distributed}", f"cloudpickle=={metadata.version('cloudpickle')}"],
            env={**os.environ, "VIRTUAL_ENV": str(venv)},
            check=True,
        )
        return import_test_image(
            {f"{DASK_IMAGE_CODE}/in_the_image.py": IN_THE_IMAGE},
            tag,
            folders={DASK_PREFIX: venv},
            path=f"{DASK_PREFIX}/bin:/usr/bin",
            environ={"PYTHONPATH": DASK_IMAGE_CODE},
        )


def remove_image(image: str) -> None:
    """Removes a test image (a missing one is fine)."""
    subprocess.run([shutil.which("podman") or "podman", "rmi", "--force", image], capture_output=True)


__all__ = ["DASK_PREFIX", "engine_conf", "import_dask_image", "import_test_image", "remove_image"]
