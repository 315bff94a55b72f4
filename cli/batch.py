"""``python -m echo_forcing batch PROMPTS.txt --out DIR [--ray [ADDRESS]]``: render every line of a prompt file
with the pack's own pipeline, in this process or on a Ray cluster.

Each line of an official-format prompt file (one multi-shot video per line) is one job: the ``render`` files
(``latents.safetensors``, ``report.json``, ``report.txt``) and ``job.json`` in ``<out>/<prompts stem>-<line:04d>/``,
and ``<out>/queue-state.json`` as ``queue`` keeps it, so running the same command again skips the lines done and
runs the failed, unfinished and changed ones. Without ``--ray`` the lines run one after another in this process;
with ``--ray`` each worker (a Ray actor with one GPU, or one CPU on a CPU cluster) loads the model once and renders
lines one at a time, and lines that share their first shot go to the same worker so it starts after the shots it
already made. ``--ray`` alone starts a Ray instance on this machine; ``--ray ADDRESS`` joins a running cluster
(``auto``, or ``host:6379``). A worker that dies is restarted and its line retried up to ``--retries`` times; a
line that fails on its own (a script the model cannot run) fails alone. Exit codes: 0 all lines done, 1 some line
failed, 2 usage error, 130 Ctrl-C, 143 SIGTERM. The prompts are encoded with the command line's stand-in text
encoder, as in ``render``; for real videos from a prompt set use ``queue`` with ComfyUI servers (docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..batch.headless import RenderRecipe
from ..batch.jobs import EXIT_USAGE, MANIFEST_NAME, BatchInterrupted, BatchUsageError, summary
from .render import add_recipe_arguments


def recipe_of(args: argparse.Namespace) -> RenderRecipe:
    files = {name: None if getattr(args, name) is None else str(getattr(args, name))
             for name in ("checkpoint", "lora", "vae")}
    return RenderRecipe(**files, dtype=args.dtype, preset=args.preset, width=args.width, height=args.height,
                        fps=args.fps, steps=args.steps, card=args.card, shift=args.shift, seed=args.seed,
                        noise=args.noise, device=args.device, threads=args.threads)


def run(args: argparse.Namespace) -> int:
    from ..batch.render_batch import LocalPool, run_batch

    try:
        recipe = recipe_of(args)
        if args.ray is None:
            if args.workers not in (None, 1):
                raise BatchUsageError("--workers needs --ray: without it the lines run one after another here")

            def pool():
                return LocalPool(recipe)
        else:
            from ..batch.ray_pool import RayPool, import_ray

            import_ray()  # a clear error before any work when Ray is not installed

            def pool():
                return RayPool(recipe, args.ray, args.workers, args.retries)
        results = run_batch(args.prompts, args.out, recipe, pool, bars=None if not args.no_bars else False)
    except BatchUsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BatchInterrupted as err:
        print(f"\ninterrupted: the workers were stopped and the state is saved in {args.out / MANIFEST_NAME}; run "
              "the same command again to continue (lines already done are skipped)", file=sys.stderr)
        return err.exit_code
    text, code = summary(results, args.prompts, args.out)
    print(text)
    return code


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="render every line of a prompt file here or on a Ray cluster (--ray)",
                       description=__doc__.split("\n\n")[1].replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", type=Path, metavar="PROMPTS.txt",
                   help="prompt file: one scene script per line; blank lines and lines starting with # are skipped")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help=f"output folder: one subfolder per line, plus {MANIFEST_NAME} for resuming")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: alone, a Ray instance started here for the batch; with an address, a running "
                        "cluster (auto, or HOST:6379); needs pip install -e '.[ray]'")
    p.add_argument("--workers", type=int, default=None,
                   help="with --ray: workers (one model each); default: the cluster's GPUs, or 1 without GPUs")
    p.add_argument("--retries", type=int, default=2,
                   help="with --ray: restarts of a worker that dies, and retries of the line it was running "
                        "(default 2); a line that fails on its own is not retried")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per worker (with --ray on a CPU cluster also its CPUs; default: torch's "
                        "own, 1 per Ray CPU worker); on the CPU the same bits need the same number of threads")
    p.add_argument("--no-bars", action="store_true", help="no progress bars (default: bars on a terminal)")
    add_recipe_arguments(p, device_default=None)
    p.add_argument("--vae", type=Path, default=None, metavar="FILE",
                   help="with --preset krea: the Wan2.1 VAE, to re-encode the first context frame from decoded "
                        "pixels (Krea Realtime's release default)")
    p.set_defaults(func=run)
