"""The pack as a package: importable under any folder name (as ComfyUI loads it), no ComfyUI at import."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import echo_forcing

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")

ROOT = Path(echo_forcing.__file__).parent
PACKAGES = ("models", "memory", "pipeline", "nodes", "cli", "batch")


def _load_like_comfyui(folder: Path):
    """Import ``folder/__init__.py`` the way ComfyUI does: module name = the folder's absolute path."""
    name = str(folder.resolve()).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name, module


def _copy_pack(folder: Path) -> Path:
    """The pack's code (root modules and sub-packages, no tests) copied into ``folder``."""
    folder.mkdir(parents=True)
    for module_file in ROOT.glob("*.py"):  # __init__, __main__ and the root modules (safe_files)
        shutil.copy(module_file, folder)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_pack_imports_under_another_folder_name_without_comfyui(tmp_path):
    copy = _copy_pack(tmp_path / "Some Other-Name.v2")
    name, module = _load_like_comfyui(copy)
    try:
        assert module.WEB_DIRECTORY == "./web"
        assert inspect.iscoroutinefunction(module.comfy_entrypoint)
        rollout = importlib.import_module(name + ".pipeline.rollout")  # relative imports resolve inside the copy
        assert Path(rollout.__file__).is_relative_to(copy)
        assert not any(m == "comfy" or m.startswith(("comfy.", "comfy_api", "folder_paths")) for m in sys.modules)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_no_absolute_imports_of_the_pack_inside_the_pack():
    offenders = []
    sources = [*ROOT.glob("*.py"), *(p for d in PACKAGES for p in (ROOT / d).rglob("*.py"))]
    for path in sources:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("import echo_forcing", "from echo_forcing")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []


HOST_PROVIDED = {"torch", "comfy", "comfy_api", "comfy_execution", "folder_paths", "server", "node_helpers",
                 "latent_preview", "execution", "nodes"}
"""What the pack imports but never installs: torch (ComfyUI or the user brings the right build) and ComfyUI."""
DISTRIBUTIONS = {"av": "av", "safetensors": "safetensors", "aiohttp": "aiohttp>=3.9", "numpy": "numpy",
                 "huggingface_hub": "huggingface_hub>=0.25", "tqdm": "tqdm"}
"""Import name -> requirement line, for every third-party package the pack's code imports."""
EXTRAS = {"ray": ("ray", "ray>=2.40,<3")}
"""Import name -> (extra, requirement) for what only an optional command imports (``batch --ray``)."""


def _third_party_imports() -> set[str]:
    """Top-level names of every absolute import in the pack's code (tests and bench excluded)."""
    sources = [*ROOT.glob("*.py"), *(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))]
    names = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__"}


def test_requirements_are_exactly_what_the_pack_imports():
    imported = _third_party_imports() - HOST_PROVIDED - set(EXTRAS)
    unknown = imported - set(DISTRIBUTIONS)
    assert not unknown, f"imported but not mapped to a requirement: {sorted(unknown)}"
    requirements = sorted(line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                          if line.strip() and not line.startswith("#"))
    assert requirements == sorted(DISTRIBUTIONS[name] for name in imported)


def test_project_metadata_and_requirements_agree():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    assert "comfyui" not in project["name"].lower()
    deps = sorted(project["dependencies"])
    requirements = sorted(line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                          if line.strip() and not line.startswith("#"))
    assert requirements == deps
    assert not any(d.startswith("torch") for d in deps + requirements)
    for extra, requirement in EXTRAS.values():
        assert project["optional-dependencies"][extra] == [requirement]
    comfy = meta["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon", "requires-comfyui"} <= set(comfy)
    assert project["version"] == echo_forcing.__version__
    assert "Repository" in project["urls"]
    packages = set(meta["tool"]["setuptools"]["packages"])
    assert packages == {"echo_forcing", *(f"echo_forcing.{p}" for p in PACKAGES)}


def test_cli_help_runs_without_comfyui():
    out = subprocess.run([sys.executable, "-m", "echo_forcing", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_cli_runs_from_a_custom_nodes_folder_without_install(tmp_path):
    """``python custom_nodes/<folder> <command>`` (a ComfyUI install: no pip install of the pack) runs the
    tools from that folder, whatever it is called, and its sub-folders do not shadow other packages."""
    folder = _copy_pack(tmp_path / "custom nodes" / "ComfyUI-Echo Forcing.git")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(folder), "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert all(command in out.stdout for command in ("demo", "queue", "render", "tiny-models", "workflows"))
    probe = ("import runpy, sys\n"
             f"sys.argv = [{str(folder)!r}, 'workflows', '--help']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
             "import echo_forcing.cli.workflows as w\n"
             "print(w.__file__)\nprint(any(p.rstrip('/').endswith('.git') for p in sys.path))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    loaded_from, folder_on_path = out.stdout.strip().splitlines()[-2:]
    assert Path(loaded_from).is_relative_to(folder)
    assert folder_on_path == "False"
