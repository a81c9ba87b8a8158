"""A griffe extension for the API reference: keyword arguments that a function takes as
``**arguments: Unpack[SomeTypedDict]`` are listed by griffe's ``unpack_typeddict`` extension, with
``...`` for their defaults, which a TypedDict cannot hold. Where the function itself says them, in
a ``__signature__`` (``prefect_remote.function`` and ``RemoteCluster`` do, for ``help()``), this
shows those defaults instead, in the signature and in the parameters table.
"""

from __future__ import annotations

import inspect
from typing import Any

import griffe


class LiveDefaults(griffe.Extension):
    """Fills ``...`` defaults from the live object's signature; runs after ``unpack_typeddict``."""

    def on_function(self, *, func: griffe.Function, **kwargs: Any) -> None:
        """Replaces each ``...`` default that the imported function's signature knows."""
        unknown = [parameter for parameter in func.parameters if parameter.default == "..."]
        if not unknown:
            return
        try:
            live = inspect.signature(griffe.dynamic_import(func.path)).parameters
        except (ImportError, TypeError, ValueError):
            return
        known = {name: repr(parameter.default) for name, parameter in live.items() if parameter.default is not inspect.Parameter.empty}
        for parameter in unknown:
            parameter.default = known.get(parameter.name, parameter.default)
        for section in func.docstring.parsed if func.docstring else []:
            if section.kind is griffe.DocstringSectionKind.parameters:
                for documented in section.value:
                    if documented.value == "...":
                        documented.value = known.get(documented.name, documented.value)
