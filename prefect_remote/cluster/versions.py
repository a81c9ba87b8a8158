"""Dask's version check, without the one warning nobody can act on: a Python patch level.

A Dask client that connects to a scheduler gets a table of every version that differs between it,
the scheduler and the workers, and warns with it (``VersionMismatchWarning``). Machines run the
client's exact Python wherever it can be had (``software.rebuild``, the boot script); where it
cannot (no route to the download host), they run the same minor version, whose code and pickles
are the same. A table whose only row is Python, at the client's major.minor version everywhere,
is ignored; any other row (a package's version, another minor Python) still warns.

>>> from distributed.versions import error_message
>>> client, scheduler = {"packages": {"python": "3.11.7.final.0"}}, {"packages": {"python": "3.11.2.final.0"}}
>>> only_python_patch_differs(error_message(scheduler, {}, client)["warning"])
True
"""

from __future__ import annotations

import re
import warnings

_SAME_MINOR = r"(?P=minor)\.\d+\.\w+\.\d+"  # a version cell (sys.version_info, joined) at the client's major.minor
# The table of distributed.versions.error_message (drawn by distributed.utils.asciitable) when its
# only row is Python; the workers' cell is one version, a set of them, or None (no workers yet).
PATCH_ONLY = (
    r"Mismatched versions found\n\n"
    r"\+[-+]+\+\n"
    r"\| Package +\| Client +\| Scheduler +\| Workers +\|\n"
    r"\+[-+]+\+\n"
    rf"\| python +\| (?P<minor>\d+\.\d+)\.\d+\.\w+\.\d+ +\| {_SAME_MINOR} +\| "
    rf"(?:None|{_SAME_MINOR}|\{{'{_SAME_MINOR}'(?:, '{_SAME_MINOR}')*\}}) +\|\n"
    r"\+[-+]+\+\Z"
)


def only_python_patch_differs(message: str) -> bool:
    """Whether Dask's version warning ``message`` is about nothing but the Python patch level."""
    return re.match(PATCH_ONLY, message, re.I) is not None  # as the warnings module matches it


def ignore_python_patch_mismatch() -> None:
    """Makes this process's Dask clients drop a ``VersionMismatchWarning`` about nothing but the Python
    patch level (:func:`only_python_patch_differs`); every other version warning still shows."""
    from distributed.versions import VersionMismatchWarning

    # Added once however often called (the warnings module replaces an equal filter).
    warnings.filterwarnings("ignore", message=PATCH_ONLY, category=VersionMismatchWarning, module=r"distributed\.client")


def dask_versions() -> dict[str, str]:
    """What must match between a client and a cluster whose scheduler and workers run an image:
    ``distributed`` exactly (its wire protocol and pickles; it pins ``dask``), Python to the minor
    version (code objects and pickles; the patch level does not matter, as above). From Dask's own
    :func:`distributed.versions.get_versions`.

    >>> sorted(dask_versions())
    ['distributed', 'python']
    """
    from distributed.versions import get_versions

    packages = get_versions()["packages"]
    return {"distributed": packages["distributed"], "python": ".".join(packages["python"].split(".")[:2])}


def image_mismatch(image: str, client: dict[str, str], here: dict[str, str]) -> str | None:
    """Why image ``image``, whose Dask is ``here``, cannot serve a client whose Dask is ``client``
    (both :func:`dask_versions`), or None when they match.

    >>> image_mismatch("app", {"distributed": "2026.8.0", "python": "3.11"}, {"distributed": "2026.1.0", "python": "3.11"}).split(":")[0]
    "image 'app' has distributed 2026.1.0 (Python 3.11), and this cluster's client distributed 2026.8.0 (Python 3.11)"
    >>> image_mismatch("app", {"distributed": "2026.8.0", "python": "3.11"}, {"distributed": "2026.8.0", "python": "3.11"}) is None
    True
    """
    differ = [name for name in ("distributed", "python") if client.get(name) != here.get(name)]
    if not differ:
        return None
    wanted = {"distributed": f"distributed=={client.get('distributed')}", "python": f"Python {client.get('python')}"}
    need = " and ".join(wanted[name] for name in differ)
    return (
        f"image {image!r} has distributed {here.get('distributed')} (Python {here.get('python')}), and this cluster's client "
        f"distributed {client.get('distributed')} (Python {client.get('python')}): a cluster's scheduler and workers run the "
        f"image's Dask, which must match its client's; build the image with {need}, or run the client with the image's"
    )
