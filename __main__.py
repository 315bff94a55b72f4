"""``python -m echo_forcing <command>``: the pack's command-line tools."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["queue"]:  # the batch client alone: it needs neither torch nor ComfyUI
        from .cli import queue

        return queue.main(argv[1:])
    from .batch import BatchUsageError
    from .cli import demo, queue, render, tiny_models, workflows
    from .pipeline import RolloutInputError

    parser = argparse.ArgumentParser(prog="python -m echo_forcing", description="Echo-Forcing for ComfyUI tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
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
    sys.exit(main())
