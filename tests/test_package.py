"""The pack as a package: importable under any folder name (as ComfyUI loads it), no ComfyUI at import."""

from __future__ import annotations

import importlib.util
import inspect
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


def test_pack_imports_under_another_folder_name_without_comfyui(tmp_path):
    copy = tmp_path / "Some Other-Name.v2"
    copy.mkdir()
    for module_file in ROOT.glob("*.py"):  # __init__, __main__ and the root modules (safe_files)
        shutil.copy(module_file, copy)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
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


def test_project_metadata_and_requirements_agree():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    assert "comfyui" not in project["name"].lower()
    deps = sorted(project["dependencies"])
    assert deps == sorted(["einops", "safetensors", "huggingface-hub", "opencv-python", "aiohttp>=3.9"])
    requirements = sorted(line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                          if line.strip() and not line.startswith("#"))
    assert requirements == deps
    assert not any(d.startswith("torch") for d in deps + requirements)
    comfy = meta["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon", "requires-comfyui"} <= set(comfy)
    assert project["version"] == echo_forcing.__version__
    assert "Repository" in project["urls"]
    packages = set(meta["tool"]["setuptools"]["packages"])
    assert packages == {"echo_forcing", *(f"echo_forcing.{p}" for p in PACKAGES)}


def test_cli_help_runs_without_comfyui():
    out = subprocess.run([sys.executable, "-m", "echo_forcing", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout
