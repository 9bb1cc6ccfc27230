"""The code's layers: no import cycles, the light client stays light, the services-extra guard fires,
and every service file is wiring only (short, and built on the shared scaffold)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE_FILES = sorted(ROOT.glob("services/*/service.py"))
# Stage wiring a service file delegates (it would not fit the service file's size): `*_stage.py`.
STAGE_FILES = sorted(ROOT.glob("services/*/*_stage.py"))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other (directly or not)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            groups.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return groups


def test_strongly_connected_finds_a_planted_cycle():
    assert [
        g for g in strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(g) > 1
    ] == [["a", "b", "c"]]


def test_no_import_cycles_anywhere():
    """Every import counts: module level, inside functions and under TYPE_CHECKING."""
    graph = grimp.build_graph("services", "gateway", "sfhq", include_external_packages=False)
    modules = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    assert len(modules) > 60
    cycles = [group for group in strongly_connected(edges) if len(group) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_import_contracts_hold():
    """The import-linter contracts of pyproject.toml (light client, common, gateway, model files)."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 6  # the studio's contract among them
    assert f"{len(contracts)} kept, 0 broken" in result.stdout


def test_the_light_client_imports_no_service_code_and_no_heavy_library():
    code = textwrap.dedent(
        """
        import sys
        import sfhq.cli, sfhq.sdk, sfhq.progress
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in
                       {'torch', 'redis', 'faiss', 'transformers', 'onnxruntime', 'gateway', 'dlib'})
        services = sorted(m for m in sys.modules if m.startswith('services') and m not in ('services', 'services.cli'))
        print(heavy, services)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # services.cli (the plugin that adds `serve`, `run`...) is loaded, and it is light itself.
    assert result.stdout.strip() == "[] []"


BLOCK_SERVICES_EXTRA = """
import importlib.abc, sys
class _LightInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'redis', 'faiss', 'dlib', 'transformers', 'onnxruntime'}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _LightInstall())
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split('.')[0] in {'torch', 'redis', 'faiss', 'dlib', 'transformers', 'onnxruntime'}
    else _find(name, package))
from sfhq.cli import app
app()
"""


@pytest.mark.parametrize(
    "command", [["run", "examples/inspiration", "out/x"], ["serve", "encoder"], ["weights", "list"]]
)
def test_the_services_extra_guard_fires_in_a_light_install(command, tmp_path):
    """A light install (no torch, no redis...) gets one line naming the extra, exit code 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_SERVICES_EXTRA, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "pip install 'sfhq-factory[services]'" in result.stderr and "torch" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (ROOT / "out" / "x").exists()
    # The client commands still work without the extra.
    version = subprocess.run([sys.executable, "-c", BLOCK_SERVICES_EXTRA, "version"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert version.returncode == 0 and version.stdout.strip()


@pytest.mark.parametrize("path", SERVICE_FILES, ids=lambda p: p.parent.name)
def test_each_service_file_is_wiring_on_the_shared_scaffold(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 275, f"{path} has {len(text.splitlines())} lines (wiring is about 250)"
    for needed in ("services.common.server import", "ServiceProcess", "run_service", "batched_handler"):
        assert needed in text, f"{path.name} does not use {needed}"
    # The scaffold owns these; a service re-implementing them is a near-copy in the making.
    for owned in (
        "def read_image",
        "class OutputFormat",
        "def status_of",
        "def typed_errors",
        "Loader:",
        "Runner:",
    ):
        assert owned not in text, f"{path.name} defines {owned!r}, which services.common provides"


def test_stage_payloads_and_outputs_are_one_module_shared_by_gateway_and_handlers():
    from services.common import contracts
    from services.common.stages import STAGES

    assert set(contracts.PAYLOADS) == set(STAGES) == set(contracts.OUTPUTS)
    pipeline = (ROOT / "gateway" / "pipeline.py").read_text()
    for stage, payload in contracts.PAYLOADS.items():
        assert payload.__name__ in pipeline, (
            f"gateway/pipeline.py builds {stage} tasks without {payload.__name__}"
        )
    handlers = "".join(path.read_text() for path in SERVICE_FILES + STAGE_FILES)
    for payload in contracts.PAYLOADS.values():
        assert f"{payload.__name__}.parse(" in handlers, f"no handler parses {payload.__name__}"
