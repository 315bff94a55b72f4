"""Submit-time checks of the nodes' inputs, in the shape ComfyUI gives its own validation errors.

How ComfyUI (v0.3.64 and v0.28.0 alike, ``execution.validate_inputs``) runs a V3 node's ``validate_inputs``:
it passes only the inputs named in the method's signature that the prompt holds (a linked one as None, a
missing one not at all), skips its own combo, min and max checks for exactly those inputs, and turns a
returned string into one ``custom_validation_failed`` error for EVERY argument it passed. So each node's
``validate_inputs`` names only the inputs ComfyUI cannot check itself, each with the default None (a missing
input is ComfyUI's "Required input is missing", a linked one is checked when the node runs), and ComfyUI's
own checks attach every other error to its own input. (A check of two inputs, the sampler's width and
height, therefore shows on both; its message names the one that is wrong.)

v0.3.64 checks the options of V1 combos only (an input whose type is the list of options), not of V3
``io.Combo`` inputs; :class:`CombosChecked` hands that host's validation the V1 form of the node's combos,
so an unknown preset or transition is ``value_not_in_list`` on its own input there as on v0.28.0. The node
definitions the frontend reads (``/object_info``) are not changed.
"""

from __future__ import annotations

import inspect
import sys

from ..safe_files import shown


def is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def pixel_problem(node: str, name: str, value: object, low: int, high: int, multiple: int) -> str | None:
    """What is wrong with a frame size in pixels (``low..high``, a multiple of ``multiple``), or None."""
    if value is None:  # linked from another node: the run checks it
        return None
    if not is_whole(value):
        return f"{node}: {name} {shown(value)} is not a whole number of pixels; use a multiple of {multiple}"
    if value < low:
        return (f"{node}: {name} {shown(value)} is below the minimum of {low}; use {low} or more (a multiple of "
                f"{multiple})")
    if value > high:
        return (f"{node}: {name} {shown(value)} is above the maximum of {high}; use {high} or less (a multiple "
                f"of {multiple})")
    if value % multiple:
        below = value - value % multiple
        nearest = [str(v) for v in (below, below + multiple) if low <= v <= high]
        return f"{node}: {name} {value} is not a multiple of {multiple}; use {' or '.join(nearest)}"
    return None


def text_problem(node: str, name: str, value: object) -> str | None:
    """A text input that is not text (ComfyUI turns every literal of a STRING input into text before it calls
    ``validate_inputs``; a direct call may pass anything)."""
    if value is None or isinstance(value, str):
        return None
    return f"{node}: {name} must be text, got {type(value).__name__} {shown(value)}"


def file_name_problem(node: str, name: str, value: object, check, fix: str = "") -> str | None:
    """A file-name input: ``check(value)`` says what is wrong with a text value, or None (a check that fails
    with OSError or ValueError says so); ``fix`` is added to the message."""
    if value is None:  # linked from another node: the run checks it
        return None
    problem = text_problem(node, name, value)
    if problem:
        return problem
    try:
        problem = check(value)
    except (OSError, ValueError) as err:
        problem = f"{shown(value)} cannot be used: {err}"
    return f"{node}: {name}: {problem}{'; ' + fix if fix else ''}" if problem else None


# ---- v0.3.64: V3 combos checked as V1 combos -------------------------------------------------------------


def _host_skips_v3_combos() -> bool:
    """True on a host whose prompt validation checks only V1 (list) combo types, as v0.3.64 does. False
    when that cannot be told (the host's own behaviour is then left as it is), and on every host whose input
    parser needs the V3 type names (v0.28.0's ``get_finalized_class_inputs``)."""
    execution = sys.modules.get("execution")
    io_module = sys.modules.get("comfy_api.latest._io")
    if execution is None or io_module is None or hasattr(io_module, "get_finalized_class_inputs"):
        return False
    try:
        source = inspect.getsource(execution.validate_inputs)
    except (AttributeError, OSError, TypeError):
        return False
    return "isinstance(input_type, list)" in source and "Combo" not in source and "COMBO" not in source


_SKIPS: list[bool] = []


def host_skips_v3_combos() -> bool:
    """:func:`_host_skips_v3_combos`, decided once ComfyUI's execution module is loaded."""
    if not _SKIPS:
        if sys.modules.get("execution") is None:
            return False
        _SKIPS.append(_host_skips_v3_combos())
    return _SKIPS[0]


def v1_combos(inputs: dict) -> dict:
    """``inputs`` (an ``INPUT_TYPES`` dict) with every V3 combo ``("COMBO", {"options": [...]})`` given as a
    V1 combo ``([...], {...})``, the form every ComfyUI checks against its options."""
    out = dict(inputs)
    for group in ("required", "optional"):
        specs = inputs.get(group)
        if not isinstance(specs, dict):
            continue
        out[group] = {
            name: ((list(spec[1]["options"]), *spec[1:])
                   if isinstance(spec, tuple) and len(spec) > 1 and str(spec[0]) == "COMBO"
                   and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list) else spec)
            for name, spec in specs.items()}
    return out


class CombosChecked:
    """Mixin for a V3 node (before ``io.ComfyNode`` in its bases): on a host that skips V3 combos in prompt
    validation (v0.3.64), the inputs its validation reads give each combo's options as a V1 list, so ComfyUI
    itself refuses an unknown value, on that input alone. Elsewhere it changes nothing."""

    @classmethod
    def INPUT_TYPES(cls, *args, **kwargs):
        result = super().INPUT_TYPES(*args, **kwargs)
        if not host_skips_v3_combos():
            return result
        if isinstance(result, tuple):  # (inputs, schema) with return_schema=True
            return (v1_combos(result[0]), *result[1:])
        return v1_combos(result)
