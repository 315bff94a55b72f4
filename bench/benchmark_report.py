"""What the benchmark scripts share: the measurement line (commit, hardware) and the markdown section writer.

Imported by ``bench/rollout.py`` and ``bench/memory_ops.py`` (run as scripts, so ``bench/`` is on the path).
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def commit() -> str:
    """Short hash of the checkout's HEAD, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    """The GPU's name, or the CPU and the number of torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## <title>`` section of a markdown file, keeping the other sections."""
    head = f"## {title}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if head in text:
        before, rest = text.split(head, 1)
        following = rest.find("\n## ")
        after = rest[following + 1:] if following >= 0 else ""
        text = before + head + "\n" + body.rstrip("\n") + "\n" + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + head + "\n" + body
    path.write_text(text, encoding="utf-8")
