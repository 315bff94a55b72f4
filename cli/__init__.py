"""Command-line tools of the pack (``python -m echo_forcing <command>``). No ComfyUI imports."""
