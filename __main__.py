"""``python -m echo_forcing <command>``: the pack's command-line tools.

In a ComfyUI install the pack is a folder in ``custom_nodes`` and not an installed package; there,
``python custom_nodes/<folder> <command>`` (with ComfyUI's Python) runs the same tools: Python runs this file
as a script, and :func:`_load_folder_as_package` makes the folder the package ``echo_forcing`` first,
whatever the folder is called.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys


def _load_folder_as_package() -> None:
    """Import this file's folder as the package ``echo_forcing`` (run as ``python <folder> ...``).

    The folder itself leaves ``sys.path`` (Python put it first), so its sub-folders (``models``, ``batch``,
    ...) can never shadow another installed package of the same name.
    """
    folder = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != folder]
    spec = importlib.util.spec_from_file_location("echo_forcing", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules["echo_forcing"] = package
    spec.loader.exec_module(package)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["queue"]:  # the batch client alone: it needs neither torch nor ComfyUI
        from .cli import queue

        return queue.main(argv[1:])
    from .batch import BatchUsageError
    from .cli import batch, demo, models, queue, render, tiny_models, workflows
    from .pipeline import RolloutInputError

    parser = argparse.ArgumentParser(prog="python -m echo_forcing", description="Echo-Forcing for ComfyUI tools")
    sub = parser.add_subparsers(dest="command", required=True)
    batch.add_parser(sub)
    demo.add_parser(sub)
    models.add_parser(sub)
    queue.add_parser(sub)
    render.add_parser(sub)
    tiny_models.add_parser(sub)
    workflows.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (RolloutInputError, ValueError, BatchUsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    if not __package__:  # python <folder> <command>
        _load_folder_as_package()
        sys.exit(importlib.import_module("echo_forcing.__main__").main())
    sys.exit(main())
