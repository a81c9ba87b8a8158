"""The machine side imports only the standard library: the agent imports it on every machine boot,
before the payload starts (launch-to-payload time is what users feel), and a stock-image machine's
agent environment holds prefect-remote and only the few libraries its provider's runtime calls
lazily (``Provider.agent_extras``)."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import prefect_remote
from prefect_remote.providers import available_providers, provider_class

# What a machine runs besides the agent and its provider's runtime: the local provider's per-machine
# monitor, and its launches from namespace machines.
OTHER_MACHINE_PROCESSES = ["prefect_remote.providers.local.hypervisor", "prefect_remote.providers.local.host_launch"]

REPORT_THIRD_PARTY = """
import sys
sys.path.insert(0, {root!r})
third_party = {{}}  # module -> what importing it loaded first
for name in {modules!r}:
    before = set(sys.modules)
    __import__(name)
    loaded = {{module.partition(".")[0] for module in set(sys.modules) - before}} - set(sys.stdlib_module_names) - {{"prefect_remote"}}
    if loaded:
        third_party[name] = sorted(loaded)
print(third_party)
"""


def _imported_anywhere(module: str) -> set[str]:
    """The prefect_remote modules ``module`` imports, at its top or inside its functions (which run
    on the machine too: a runtime reaches its cloud's record, secret and log readers that way), but
    not under ``if TYPE_CHECKING:``."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if _is_module(f"{node.module}.{alias.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name.partition(".")[0] == "prefect_remote"}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a name imported from a module, not a submodule
        return False


def test_every_machine_side_module_imports_only_the_standard_library():
    """The agent, every registered provider's runtime (named as the boot script names it: a new
    provider is covered once registered), and every prefect_remote module they import, at the top
    or lazily, load no third-party module (pydantic, prefect, dask, psutil, boto3, google…) when
    imported into a fresh interpreter."""
    runtimes = [provider_class(name).runtime.partition(":")[0] for name in sorted(available_providers())]
    assert "prefect_remote.providers.aws.runtime" in runtimes and "prefect_remote.providers.gcp.runtime" in runtimes
    roots = ["prefect_remote.machine.agent", *runtimes, *OTHER_MACHINE_PROCESSES]
    modules = sorted({*roots, *(name for root in roots for name in _imported_anywhere(root))})
    assert {"prefect_remote.providers.gcp.secrets", "prefect_remote.providers.aws.logship"} <= set(modules)  # reached lazily
    root = str(Path(prefect_remote.__file__).parent.parent)
    code = REPORT_THIRD_PARTY.format(root=root, modules=modules)
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{}", f"machine-side modules loaded third-party modules: {result.stdout}"
