"""``python -m echo_forcing queue``: run every line of a prompt file as one job on one or more ComfyUI servers.

Each line of an official-format prompt file (one multi-shot video per line) goes into the workflow's
EchoForcingSceneScript node and is queued with ``POST /prompt``; progress comes over the websocket and the
outputs are downloaded through ``/view`` into ``<out>/<prompts stem>-<line:04d>/``. Several ``--server`` share
the lines (a free server takes the next one). ``<out>/queue-state.json`` records every line, so running the
same command again skips the lines already done and runs the failed, unfinished and changed ones.
Nothing is written or removed outside the output folder; output names from the server that are not plain
file names fail their line only. Ctrl-C cancels the running prompts on the servers and saves the state.
Exit codes: 0 all lines done, 1 some line failed, 2 usage error (bad file, unreachable server), 130 Ctrl-C,
143 SIGTERM.

The command needs neither torch nor ComfyUI: ``python -m echo_forcing.cli.queue`` runs it on a machine with
only aiohttp installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..batch.jobs import (
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_MAX_DOWNLOAD_GB,
    DEFAULT_READ_TIMEOUT,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    MANIFEST_NAME,
    BatchInterrupted,
    BatchUsageError,
    summary,
)


def run(args: argparse.Namespace) -> int:
    """Run the queue and print one summary line per prompt line; the exit code (``EXIT_*`` in batch.jobs)."""
    from ..batch.client import run_queue_sync

    if args.max_download_gb < 0:
        print(f"error: --max-download-gb must be 0 (no limit) or positive, got {args.max_download_gb:g}",
              file=sys.stderr)
        return EXIT_USAGE
    limit = int(args.max_download_gb * 2**30) or None
    code = None
    try:
        results = run_queue_sync(args.prompts, args.workflow, args.server, args.out, timeout=args.timeout,
                                 client_id=args.client_id, retries=args.retries, read_timeout=args.read_timeout,
                                 max_download_bytes=limit, log=lambda text: print(text, flush=True))
    except BatchUsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BatchInterrupted as err:
        code = err.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    if code is not None:
        print(f"\ninterrupted: the running prompts were cancelled on their servers and the state is saved in "
              f"{args.out / MANIFEST_NAME}; run the same command again to continue (lines already done are "
              "skipped)", file=sys.stderr)
        return code
    text, code = summary(results, args.prompts, args.out)
    print(text)
    return code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", type=Path, metavar="PROMPTS.txt",
                   help="prompt file: one scene script per line; blank lines and lines starting with # are skipped")
    p.add_argument("--server", action="append", required=True, metavar="URL",
                   help="a ComfyUI server, e.g. http://127.0.0.1:8188; repeat for several servers")
    p.add_argument("--workflow", type=Path, required=True, metavar="FILE",
                   help="API-format workflow with one EchoForcingSceneScript node: one of the pack's "
                        "workflows/api/*.json, or your own saved with Workflow > Export (API)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help=f"output folder: one subfolder per line, plus {MANIFEST_NAME} for resuming")
    p.add_argument("--timeout", type=float, default=DEFAULT_JOB_TIMEOUT, metavar="SECONDS",
                   help="per line, from submitting to the downloaded outputs; 0: no limit "
                        f"(default {DEFAULT_JOB_TIMEOUT:g} = {DEFAULT_JOB_TIMEOUT / 3600:g} hours)")
    p.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT, metavar="SECONDS",
                   help="a request or download that gets no data for this long counts as stalled (downloads are "
                        f"tried again) (default {DEFAULT_READ_TIMEOUT:g})")
    p.add_argument("--max-download-gb", type=float, default=DEFAULT_MAX_DOWNLOAD_GB, metavar="GIB",
                   help=f"largest output file to download, in GiB; 0: no limit (default {DEFAULT_MAX_DOWNLOAD_GB:g})")
    p.add_argument("--retries", type=int, default=0, help="run a failed line again up to this many times (default 0)")
    p.add_argument("--client-id", default=None,
                   help="websocket client id sent to ComfyUI (default: a random hex id)")
    p.set_defaults(func=run)


def _description() -> str:
    return __doc__.split("\n\n")[1].replace("``", "")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="run each line of a prompt file as a ComfyUI job (batch client)",
                       description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    """The command on its own (``python -m echo_forcing.cli.queue``): imports neither torch nor ComfyUI."""
    parser = argparse.ArgumentParser(prog="python -m echo_forcing queue", description=_description(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
