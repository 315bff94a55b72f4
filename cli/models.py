"""``python -m echo_forcing models list|download``: the model files the pack knows, by name.

``models list [--to DIR]`` prints the registry (``models/registry.py``): name, family, folder, file, size,
licence and, with a models folder, whether the file is there. ``models download NAME [NAME ...] [--to DIR]``
fetches each file at its pinned commit from the Hugging Face hub (``--endpoint URL`` or ``HF_ENDPOINT`` for a
mirror), checks its SHA-256, converts a pickle release to safetensors and puts it in ``DIR/<folder>/``
(``cli/model_downloads.py``). ``DIR`` is the ComfyUI models folder: given with ``--to``, or found when the pack
sits in ``ComfyUI/custom_nodes/``. ``--file PATH`` takes a file downloaded by hand instead of the hub (one name).

Exit codes: 0 done (or already there), 1 a download or check failed (the message says what and how to get the
file by hand), 2 a request that cannot be met as given (an unknown name, no models folder, a target outside
it, a file in the way), 130 interrupted (a partial download is kept and continued by the next run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..models.registry import FOLDERS, KNOWN_MODELS, UnknownModelError, by_name
from ..safe_files import UnsafePathError

PACK_DIR = Path(__file__).resolve().parent.parent


def comfyui_models_dir() -> Path | None:
    """``ComfyUI/models`` when the pack sits in ``ComfyUI/custom_nodes/`` (linked or not), else None."""
    for pack in (Path(os.path.abspath(PACK_DIR)), PACK_DIR):
        comfy = pack.parent.parent
        if pack.parent.name == "custom_nodes" and (comfy / "folder_paths.py").is_file() and (comfy / "models").is_dir():
            return comfy / "models"
    return None


def _models_dir(args) -> Path | None:
    return Path(args.to) if args.to else comfyui_models_dir()


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def list_models(models_dir: Path | None, out=print) -> None:
    """The registry as a table; the ``present`` column when a models folder is known."""
    rows = [("name", "family", "folder", "file", "size", "licence", "present")]
    for m in KNOWN_MODELS:
        present = "-" if models_dir is None else "yes" if (models_dir / m.folder / m.file).is_file() else "no"
        rows.append((m.name, m.family, m.folder, m.file + (" (converted)" if m.convert else ""), _size(m.size),
                     m.licence.split(" ")[0], present))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if models_dir is None:
        out("\n(give --to <ComfyUI>/models to see which files are there)")
    out("\nDownload one with: python -m echo_forcing models download NAME --to <ComfyUI>/models")


def _run_list(args) -> int:
    list_models(_models_dir(args))
    return 0


def _run_download(args) -> int:
    from .model_downloads import ModelDownloadError, download

    try:
        models = [by_name(name) for name in args.names]
    except UnknownModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.file is not None and len(models) != 1:
        print("error: --file takes the file of one model; name exactly one", file=sys.stderr)
        return 2
    models_dir = _models_dir(args)
    if models_dir is None:
        print("error: give the ComfyUI models folder with --to (e.g. --to ComfyUI/models); it cannot be found "
              "from here", file=sys.stderr)
        return 2
    for model in models:
        try:
            download(model, models_dir, endpoint=args.endpoint, force=args.force, file=args.file)
        except (ModelDownloadError, UnsafePathError) as err:
            print(f"error: {err}", file=sys.stderr)
            return getattr(err, "exit_code", 2)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the partial download of {model.name} is kept; run the same command again to "
                  "continue it", file=sys.stderr)
            return 130
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the known model files, or download them by name into a ComfyUI "
                                      "models folder (pinned, SHA-256 checked, .pt converted to safetensors)",
                       description=__doc__.split("\n\n")[0])
    actions = p.add_subparsers(dest="models_command", required=True)
    to_help = ("the ComfyUI models folder (holding " + ", ".join(f"{f}/" for f in FOLDERS)
               + "); default: found when the pack is in ComfyUI/custom_nodes")
    listing = actions.add_parser("list", help="the known model files: name, family, folder, file, size, licence, "
                                              "whether present")
    listing.add_argument("--to", metavar="DIR", help=to_help)
    listing.set_defaults(func=_run_list)
    fetch = actions.add_parser("download", help="download model files by name into DIR/<folder>/",
                               description="Download known model files at their pinned commit, check their "
                                           "SHA-256, convert .pt releases to safetensors and put them in "
                                           "DIR/<folder>/. An interrupted download continues on the next run.")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="registry names (python -m echo_forcing models list)")
    fetch.add_argument("--to", metavar="DIR", help=to_help)
    fetch.add_argument("--endpoint", metavar="URL", help="the Hugging Face hub or a mirror (default: HF_ENDPOINT, "
                                                         "else https://huggingface.co)")
    fetch.add_argument("--force", action="store_true", help="replace a file of the same name that is not the "
                                                            "registry's")
    fetch.add_argument("--file", metavar="PATH", help="use this copy of the hub file, downloaded by hand, instead "
                                                      "of the hub (checked against the pinned SHA-256)")
    fetch.set_defaults(func=_run_download)
