"""``python -m echo_forcing queue``: run every line of a prompt file as one job on one or more ComfyUI servers.

Each line of an official-format prompt file (one multi-shot video per line) goes into the workflow's
EchoForcingSceneScript node and is queued with ``POST /prompt``; progress comes over the websocket and the
outputs are downloaded through ``/view`` into ``<out>/<prompts stem>-<line:04d>/``. Several ``--server`` share
the lines (a free server takes the next one). ``<out>/queue-state.json`` records every line, so running the
same command again skips the lines already done and runs the failed, unfinished and changed ones.
Exit codes: 0 all lines done, 1 some line failed, 2 usage error (bad file, unreachable server), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..batch.jobs import FAILED, MANIFEST_NAME


def run(args: argparse.Namespace) -> int:
    """Run the queue and print one summary line per prompt line; the exit code."""
    from ..batch.client import run_queue_sync

    try:
        results = run_queue_sync(args.prompts, args.workflow, args.server, args.out, timeout=args.timeout,
                                 client_id=args.client_id, retries=args.retries,
                                 log=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the state is saved in {args.out / MANIFEST_NAME}; run the same command again to "
              "continue (lines already done are skipped)", file=sys.stderr)
        return 130
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", FAILED)}
    print(f"\nsummary of {args.prompts} -> {args.out}:")
    for result in results:
        label = "FAILED" if result.status == FAILED else result.status
        print(f"  line {result.number:>4}  {label:<7}  {result.name}  {result.detail}")
    print(f"{counts['done']} done, {counts['skipped']} skipped (done earlier), {counts[FAILED]} failed")
    return 1 if counts[FAILED] else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="run each line of a prompt file as a ComfyUI job (batch client)",
                       description=__doc__.split("\n\n")[1].replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", type=Path, metavar="PROMPTS.txt",
                   help="prompt file: one scene script per line; blank lines and lines starting with # are skipped")
    p.add_argument("--server", action="append", required=True, metavar="URL",
                   help="a ComfyUI server, e.g. http://127.0.0.1:8188; repeat for several servers")
    p.add_argument("--workflow", type=Path, required=True, metavar="FILE",
                   help="API-format workflow (*_api.json, or Workflow > Export (API)) with one "
                        "EchoForcingSceneScript node")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help=f"output folder: one subfolder per line, plus {MANIFEST_NAME} for resuming")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="per line, from submitting to the downloaded outputs (default: no limit)")
    p.add_argument("--retries", type=int, default=0, help="run a failed line again up to this many times (default 0)")
    p.add_argument("--client-id", default=None,
                   help="websocket client id sent to ComfyUI (default: a random hex id)")
    p.set_defaults(func=run)
