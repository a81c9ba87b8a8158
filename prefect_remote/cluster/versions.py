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
