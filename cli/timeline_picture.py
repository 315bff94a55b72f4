"""A picture of a run's timeline and memory, as a standalone SVG (plain text: no dependency, no script; it reads
the same in a browser and on GitHub).

Blocks run left to right. From the top:

* **shots** — one band per shot with its number and label; between two shots the transition into the second:
  a blend of the two colours for a smooth continuation, a thick bar for a hard cut, and for a recall an arrow
  from the recalled shot;
* **switches** — what each switch did: the mode, the recalled shot and its similarity, the old frames carried;
* **KV cache** — per block the frames in the working cache after it, stacked in slot order: the old memory
  carried from the previous shot (faded by its decay weight), the anchors, the compressed history, the recent
  block and the current block. A memory that does not report this breakdown (the baselines) is drawn as one
  bar of its frames;
* **old memory weight** — the decay weights of the old memory each block saw (the band from the smallest to
  the largest, the largest written above it) and a cross where the old memory was deleted;
* the block numbers and the time in the video at each shot's start, and a legend.

Torch-free: the input is the run report (``pipeline.run_report.build_report``) and the per-block rows of
:func:`block_rows`, which reads the memory's per-block reports (``RolloutResult.block_reports``: ``slots`` and
the ``notes`` ``anchor_slots``, ``compressed_slots``, ``recent_slots``, ``old_slots``, ``old_weights``,
``old_slots_dropped``, each used when present) and the switches (``RolloutResult.switches``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from ..memory.config import Transition

PARTS = (("old", "old_slots", "old memory (fades with its decay weight)", "#6c757d"),
         ("anchors", "anchor_slots", "anchors", "#1d4e89"),
         ("compressed", "compressed_slots", "compressed history", "#7b2cbf"),
         ("recent", "recent_slots", "recent block", "#2a9d8f"),
         ("current", None, "current block", "#f4a261"))
"""Cache regions in slot order (bottom to top): key, the BlockReport note that counts it, legend text, colour.
The current block is what the others leave of ``slots``."""
TOTAL_COLOUR = "#8d99ae"
SHOT_COLOURS = ("#a8dadc", "#ffd6a5", "#caffbf", "#ffc6ff", "#bdb2ff", "#fdffb6", "#9bf6ff", "#ffadad")
RECALL_COLOUR = "#c1121f"
CUT_COLOUR = "#111111"
DELETE_COLOUR = "#d00000"
FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
CHAR_WIDTH = 0.6
"""Average glyph width in em, to fit labels (generous for these fonts)."""

GUTTER = 150
LABEL_X = GUTTER - 30
"""Where the row names end (the axis numbers stand between them and the plot)."""
BAND_TOP, BAND_HEIGHT = 108, 36
EVENTS_TOP, EVENT_LINES = BAND_TOP + BAND_HEIGHT + 6, 3
CACHE_TOP, CACHE_HEIGHT = EVENTS_TOP + 17 * EVENT_LINES + 12, 126
WEIGHT_TOP, WEIGHT_HEIGHT = CACHE_TOP + CACHE_HEIGHT + 22, 60
AXIS_TOP = WEIGHT_TOP + WEIGHT_HEIGHT + 8
LEGEND_TOP = AXIS_TOP + 46

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# ------------------------------------------------------------------------------------------------- block rows


def _field(item, name: str, default=None):
    """``item.name`` or ``item[name]``: block reports are objects in a run and dicts in a JSON file."""
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _count(value) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def mode_of(name: str | None) -> str | None:
    """A transition or mode as the picture names it: "smooth", "hard cut", "recall", "auto", "start"."""
    if name is None:
        return None
    try:
        return Transition.from_label(name).label
    except ValueError:  # "start", or a mode of a memory outside the vocabulary
        return str(name).strip().lower()


def _parts(slots: int, notes: Mapping) -> dict[str, int] | None:
    """The cache regions of one block, or None when the memory reports no breakdown."""
    if not any(note in notes for _, note, _, _ in PARTS if note):
        return None
    parts = {key: _count(notes.get(note)) for key, note, _, _ in PARTS if note}
    parts["current"] = max(0, slots - sum(parts.values()))
    return parts


def _weights(value) -> list[float] | None:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        return None
    numbers = [float(v) for v in value if isinstance(v, (int, float)) and math.isfinite(v)]
    return [min(numbers), max(numbers)] if numbers else None


NO_MODE = "new prompt"
"""What a switch did when the memory reports no mode (the baselines without a switch of their own)."""


def _switch(shot: Mapping, carried: Mapping[int, int]) -> dict:
    return {"mode": mode_of(shot.get("mode")) or NO_MODE, "planned": mode_of(shot.get("transition")),
            "recalled": shot.get("recalled"), "similarity": shot.get("similarity"),
            "old_slots": carried.get(shot["index"])}


def block_rows(report: Mapping, block_reports: Sequence, switches: Sequence[Mapping] = ()) -> list[dict]:
    """Per block of a run: its shot, the frames in the cache after it and their regions (None when the memory
    does not report them), the old memory's decay weights ``[min, max]`` it saw, the old frames deleted after
    it, and at a shot's first block the switch into that shot (mode, recalled shot, similarity, old frames
    carried). ``block_reports`` are ``RolloutResult.block_reports`` (or their dicts), ``switches`` its
    ``switches``. JSON-able."""
    shots = list(report["shots"])
    carried = {s["scene"]: _count(s.get("old_slots")) for s in switches if "scene" in s}
    owner = {b: shot for shot in shots for b in range(shot["first_block"], shot["first_block"] + shot["blocks"])}
    rows = []
    for b, block in enumerate(block_reports):
        notes = _field(block, "notes") or {}
        slots = _count(_field(block, "slots", 0))
        shot = owner.get(b)
        first = shot is not None and shot["index"] > 0 and b == shot["first_block"]
        rows.append({"block": b, "shot": None if shot is None else shot["index"], "slots": slots,
                     "parts": _parts(slots, notes), "old_weights": _weights(notes.get("old_weights")),
                     "old_dropped": _count(notes.get("old_slots_dropped")),
                     "switch": _switch(shot, carried) if first else None})
    return rows


# ---------------------------------------------------------------------------------------------------- drawing


def _clean(text: object) -> str:
    """Text as XML can hold it: characters XML 1.0 forbids dropped, markup escaped (quotes too, for attributes)."""
    return escape(_NOT_XML.sub("", str(text)), {'"': "&quot;", "'": "&#39;"})


def _fit(text: str, width: float, size: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels at font ``size`` ("" when nothing fits)."""
    room = int(width / (size * CHAR_WIDTH))
    if len(text) <= room:
        return text
    return text[: room - 1].rstrip() + "…" if room >= 2 else ""


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


@dataclass
class _Svg:
    width: float
    height: float = 0
    parts: list[str] = field(default_factory=list)
    defs: list[str] = field(default_factory=list)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, text: str, size: float = 11, anchor: str = "start", weight: str = "normal",
             colour: str = "#222", title: str | None = None) -> None:
        tip = f"<title>{_clean(title)}</title>" if title else ""
        self.add(f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{colour}">{tip}{_clean(text)}</text>')

    def rect(self, x: float, y: float, w: float, h: float, fill: str, title: str | None = None,
             extra: str = "") -> None:
        tip = f"<title>{_clean(title)}</title>" if title else ""
        self.add(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" fill="{fill}"{extra}>'
                 f"{tip}</rect>")

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 1,
             extra: str = "") -> None:
        self.add(f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" stroke="{colour}" '
                 f'stroke-width="{_num(width)}"{extra}/>')

    def document(self, title: str) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(self.width)}" height="{_num(self.height)}" '
                f'viewBox="0 0 {_num(self.width)} {_num(self.height)}" font-family="{FONT}" role="img">')
        defs = "<defs>" + "".join(self.defs) + "</defs>" if self.defs else ""
        background = f'<rect width="{_num(self.width)}" height="{_num(self.height)}" fill="#ffffff"/>'
        return "\n".join([head, f"<title>{_clean(title)}</title>", defs, background, *self.parts, "</svg>"]) + "\n"


@dataclass(frozen=True)
class _Grid:
    blocks: int
    block_width: float
    capacity: int
    """Frames the cache axis shows (at least the largest cache, a whole number of blocks)."""

    def x(self, block: float) -> float:
        return GUTTER + block * self.block_width

    def slot_y(self, slots: float) -> float:
        return CACHE_TOP + CACHE_HEIGHT - slots * CACHE_HEIGHT / self.capacity

    def weight_y(self, weight: float) -> float:
        return WEIGHT_TOP + WEIGHT_HEIGHT - max(0.0, min(1.0, weight)) * WEIGHT_HEIGHT


def _shot_colour(index: int) -> str:
    return SHOT_COLOURS[index % len(SHOT_COLOURS)]


def _draw_shots(svg: _Svg, grid: _Grid, shots: Sequence[Mapping]) -> None:
    svg.text(LABEL_X, BAND_TOP + BAND_HEIGHT / 2 + 4, "shots", 12, "end", "bold")
    for shot in shots:
        x, w = grid.x(shot["first_block"]), shot["blocks"] * grid.block_width
        tip = (f"shot {shot['index'] + 1} '{shot['label']}': {_num(shot['seconds'])} s, {shot['blocks']} blocks "
               f"from block {shot['first_block'] + 1}; {shot.get('prompt', '')}")
        svg.rect(x, BAND_TOP, w, BAND_HEIGHT, _shot_colour(shot["index"]), tip, ' stroke="#ffffff" stroke-width="1"')


def _draw_shot_labels(svg: _Svg, grid: _Grid, shots: Sequence[Mapping]) -> None:
    """Number and label of every shot, on top of the transition marks (cut to fit the shot)."""
    for shot in shots:
        x, w = grid.x(shot["first_block"]), shot["blocks"] * grid.block_width
        svg.text(x + 5, BAND_TOP + BAND_HEIGHT / 2 + 4, _fit(f"{shot['index'] + 1} {shot['label']}", w - 8, 12), 12,
                 weight="bold")


def _draw_transition(svg: _Svg, grid: _Grid, shots: Sequence[Mapping], shot: Mapping) -> None:
    """The mark of the switch into ``shot`` on the shot band (and the recall arrow above it)."""
    x = grid.x(shot["first_block"])
    mode = mode_of(shot.get("mode"))
    if mode == "smooth":
        gid = f"blend{shot['index']}"
        svg.defs.append(f'<linearGradient id="{gid}"><stop offset="0" stop-color="{_shot_colour(shot["index"] - 1)}"/>'
                        f'<stop offset="1" stop-color="{_shot_colour(shot["index"])}"/></linearGradient>')
        half = min(grid.block_width * 0.6, 18)
        svg.rect(x - half, BAND_TOP, 2 * half, BAND_HEIGHT, f"url(#{gid})", "smooth continuation")
    elif mode == "hard cut":
        svg.line(x, BAND_TOP - 6, x, BAND_TOP + BAND_HEIGHT + 6, CUT_COLOUR, 4)
    elif mode == "recall":
        svg.line(x, BAND_TOP - 2, x, BAND_TOP + BAND_HEIGHT + 2, RECALL_COLOUR, 3)
        source = next((s for s in shots if s["label"] == shot.get("recalled") and s["index"] < shot["index"]), None)
        if source is not None:
            start = grid.x(source["first_block"] + source["blocks"] / 2)
            lift = BAND_TOP - 44
            svg.add(f'<path d="M {_num(start)} {BAND_TOP} C {_num(start)} {lift} {_num(x)} {lift} {_num(x)} '
                    f'{BAND_TOP - 3}" fill="none" stroke="{RECALL_COLOUR}" stroke-width="2" '
                    f'stroke-dasharray="6 3" marker-end="url(#arrow)"/>')
            apex = 0.75 * lift + 0.25 * BAND_TOP
            svg.text((start + x) / 2, apex - 4, f"recall of '{shot['recalled']}'", 11, "middle", colour=RECALL_COLOUR)
    else:
        svg.line(x, BAND_TOP, x, BAND_TOP + BAND_HEIGHT, "#555555", 2)


def _event_text(switch: Mapping) -> str:
    mode = switch["mode"] or "?"
    text = mode if switch["planned"] in (None, mode) else f"{switch['planned']} → {mode}"
    if switch.get("recalled") is not None:
        similarity = switch.get("similarity")
        text += f" ← {switch['recalled']}" + (f" ({similarity:.2f})" if isinstance(similarity, float) else "")
    old = switch.get("old_slots")
    if old:
        text += f", carries {old} old frame{'s' if old != 1 else ''}"
    return text


def _draw_events(svg: _Svg, grid: _Grid, rows: Sequence[Mapping]) -> None:
    """One line of text per switch, at the switch; a text goes to the first line where it overlaps no other."""
    svg.text(LABEL_X, EVENTS_TOP + 14, "switches", 12, "end", "bold")
    ends = [0.0] * EVENT_LINES
    for row in (r for r in rows if r["switch"] is not None):
        x = grid.x(row["block"])
        text = _event_text(row["switch"])
        width = len(text) * 11 * CHAR_WIDTH
        start = x + 3
        svg.width = max(svg.width, start + width + 10)  # the picture widens for a text at its right end
        line = next((i for i, end in enumerate(ends) if end < start), ends.index(min(ends)))
        ends[line] = start + width + 8
        y = EVENTS_TOP + 14 + 17 * line
        colour = RECALL_COLOUR if row["switch"]["mode"] == "recall" else "#222"
        svg.line(x, y - 11, x, y + 3, "#999999", 1)  # a tick at the switch, on the text's own line
        svg.text(start, y, text, 11, colour=colour, title=f"switch into shot {row['shot'] + 1} at block "
                 f"{row['block'] + 1}")


def _bar_title(row: Mapping) -> str:
    text = f"block {row['block'] + 1}" + (f" (shot {row['shot'] + 1})" if row["shot"] is not None else "")
    text += f": {row['slots']} frames in the cache"
    if row["parts"]:
        text += " - " + ", ".join(f"{key} {row['parts'][key]}" for key, *_ in PARTS if row["parts"][key])
    if row["old_weights"]:
        text += f"; old memory weight {row['old_weights'][0]:.2f}-{row['old_weights'][1]:.2f}"
    if row["old_dropped"]:
        text += f"; {row['old_dropped']} old frame(s) deleted after this block"
    return text


def _draw_bar(svg: _Svg, grid: _Grid, row: Mapping) -> None:
    x, w = grid.x(row["block"]) + 1, grid.block_width - 2
    title = _bar_title(row)
    if row["parts"] is None:
        svg.rect(x, grid.slot_y(row["slots"]), w, row["slots"] * CACHE_HEIGHT / grid.capacity, TOTAL_COLOUR, title)
        return
    bottom = 0
    for key, _, _, colour in PARTS:
        count = row["parts"][key]
        if not count:
            continue
        opacity = ""
        if key == "old" and row["old_weights"]:
            opacity = f' fill-opacity="{max(0.12, row["old_weights"][1]):.2f}"'
        svg.rect(x, grid.slot_y(bottom + count), w, count * CACHE_HEIGHT / grid.capacity, colour, title,
                 opacity + ' stroke="#ffffff" stroke-width="0.5"')
        bottom += count


def _draw_cache(svg: _Svg, grid: _Grid, rows: Sequence[Mapping]) -> None:
    svg.text(LABEL_X, CACHE_TOP + CACHE_HEIGHT / 2 - 4, "KV cache", 12, "end", "bold")
    svg.text(LABEL_X, CACHE_TOP + CACHE_HEIGHT / 2 + 11, "(frames)", 11, "end")
    for slots in range(0, grid.capacity + 1, 3):
        y = grid.slot_y(slots)
        svg.line(GUTTER, y, grid.x(grid.blocks), y, "#e5e5e5", 1)
        svg.text(GUTTER - 4, y + 3, str(slots), 9, "end", colour="#666")
    for row in rows:
        _draw_bar(svg, grid, row)


def _draw_weights(svg: _Svg, grid: _Grid, rows: Sequence[Mapping]) -> None:
    svg.text(LABEL_X, WEIGHT_TOP + WEIGHT_HEIGHT / 2 - 4, "old memory", 12, "end", "bold")
    svg.text(LABEL_X, WEIGHT_TOP + WEIGHT_HEIGHT / 2 + 11, "decay weight", 11, "end")
    for weight in (0.0, 0.5, 1.0):
        y = grid.weight_y(weight)
        svg.line(GUTTER, y, grid.x(grid.blocks), y, "#e5e5e5", 1)
        svg.text(GUTTER - 4, y + 3, f"{weight:g}", 9, "end", colour="#666")
    for row in rows:
        cx = grid.x(row["block"] + 0.5)
        if row["old_weights"]:
            low, high = row["old_weights"]
            w = min(grid.block_width * 0.5, 16)
            top, bottom = grid.weight_y(high), grid.weight_y(low)
            svg.rect(cx - w / 2, top, w, max(2.0, bottom - top), PARTS[0][3], _bar_title(row), ' fill-opacity="0.7"')
            if grid.block_width >= 24:
                svg.text(cx, top - 3, f"{high:.2f}", 8, "middle", colour="#444")
        if row["old_dropped"]:
            svg.text(cx, grid.weight_y(0) - 2, "\u00d7", 16, "middle", "bold", DELETE_COLOUR, _bar_title(row))


def _draw_axis(svg: _Svg, grid: _Grid, report: Mapping) -> None:
    video = report["video"]
    per_block = video["latent_frames"] / video["blocks"] if video.get("blocks") else 3
    step = 1 if grid.block_width >= 16 else 5
    svg.text(LABEL_X, AXIS_TOP + 12, "block", 11, "end", "bold")
    for b in range(0, grid.blocks, step):
        svg.text(grid.x(b + 0.5), AXIS_TOP + 12, str(b + 1), 9, "middle", colour="#444")
    svg.text(LABEL_X, AXIS_TOP + 28, "time", 11, "end", "bold")
    for shot in report["shots"]:
        b = shot["first_block"]
        seconds = max(0.0, 4 * b * per_block - 3) / video["fps"]
        svg.line(grid.x(b), CACHE_TOP, grid.x(b), AXIS_TOP + 18, "#bbbbbb", 1, ' stroke-dasharray="3 3"')
        svg.text(grid.x(b) + 2, AXIS_TOP + 28, f"{seconds:.1f} s", 10, colour="#444")
    svg.text(grid.x(grid.blocks), AXIS_TOP + 28, f"{video['seconds']:.1f} s", 10, "end", colour="#444")


def _legend_entries(rows: Sequence[Mapping]) -> list[tuple[str, str]]:
    """(swatch kind, text) of the legend: the cache regions drawn, then the marks drawn."""
    entries = [(key, text) for key, _, text, _ in PARTS if any(r["parts"] and r["parts"].get(key) for r in rows)]
    if any(r["parts"] is None for r in rows):
        entries.append(("total", "frames in the cache (no breakdown reported)"))
    modes = {r["switch"]["mode"] for r in rows if r["switch"]}
    marks = [("smooth", "smooth continuation"), ("hard cut", "hard cut"),
             ("recall", "recall (arrow from the recalled shot)")]
    entries += [(kind, text) for kind, text in marks if kind in modes]
    if any(r["old_dropped"] for r in rows):
        entries.append(("deleted", "old memory deleted"))
    return entries


def _draw_swatch(svg: _Svg, kind: str, x: float, y: float) -> None:
    colours = {key: colour for key, _, _, colour in PARTS}
    if kind == "old":
        for i, opacity in enumerate((1.0, 0.6, 0.3)):
            svg.rect(x + 6 * i, y, 6, 12, colours["old"], extra=f' fill-opacity="{opacity}"')
    elif kind in colours or kind == "total":
        svg.rect(x, y, 18, 12, colours.get(kind, TOTAL_COLOUR))
    elif kind == "smooth":
        svg.rect(x, y, 18, 12, "url(#legend-blend)")
    elif kind == "hard cut":
        svg.line(x + 9, y - 2, x + 9, y + 14, CUT_COLOUR, 4)
    elif kind == "recall":
        svg.line(x, y + 6, x + 16, y + 6, RECALL_COLOUR, 2, ' stroke-dasharray="4 2" marker-end="url(#arrow)"')
    else:
        svg.text(x + 9, y + 11, "\u00d7", 16, "middle", "bold", DELETE_COLOUR)


def _draw_legend(svg: _Svg, rows: Sequence[Mapping]) -> float:
    """The legend, wrapped to the picture's width; returns the y below it."""
    svg.defs.append(f'<linearGradient id="legend-blend"><stop offset="0" stop-color="{SHOT_COLOURS[0]}"/>'
                    f'<stop offset="1" stop-color="{SHOT_COLOURS[1]}"/></linearGradient>')
    svg.text(20, LEGEND_TOP + 10, "legend", 12, weight="bold")
    x, y = 80.0, LEGEND_TOP
    for kind, text in _legend_entries(rows):
        width = 28 + len(text) * 11 * CHAR_WIDTH + 18
        if x + width > svg.width - 10 and x > 80:
            x, y = 80.0, y + 20
        _draw_swatch(svg, kind, x, y)
        svg.text(x + 24, y + 10, text, 11)
        x += width
    return y + 28


def timeline_svg(report: Mapping, rows: Sequence[Mapping], title: str | None = None,
                 subtitle: str | None = None) -> str:
    """The picture of a run (see the module docstring) as an SVG document.

    ``report`` is the run report, ``rows`` the :func:`block_rows` of the run; ``title`` and ``subtitle`` default
    to a summary of the report."""
    shots, video, memory = report["shots"], report["video"], report["memory"]
    blocks = max(len(rows), video.get("blocks") or 0, 1)
    block_width = max(12.0, min(44.0, 900 / blocks))
    largest = max([r["slots"] for r in rows] + [3])
    grid = _Grid(blocks, block_width, 3 * math.ceil(largest / 3))
    svg = _Svg(width=max(GUTTER + blocks * block_width + 30, 900))
    svg.defs.append(f'<marker id="arrow" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" markerHeight="7" '
                    f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{RECALL_COLOUR}"/></marker>')
    title = title or (f"{video['shots']} shots, {blocks} blocks: what the {memory['preset']} memory keeps, "
                      "block by block")
    subtitle = subtitle or (f"{video['width']}x{video['height']}, {video['video_frames']} frames at "
                            f"{_num(video['fps'])} fps, seed {video['seed']}")
    svg.text(20, 28, title, 17, weight="bold")
    svg.text(20, 48, subtitle, 12, colour="#555")
    _draw_shots(svg, grid, shots)
    for shot in shots[1:]:
        _draw_transition(svg, grid, shots, shot)
    _draw_shot_labels(svg, grid, shots)
    _draw_events(svg, grid, rows)
    _draw_cache(svg, grid, rows)
    _draw_weights(svg, grid, rows)
    _draw_axis(svg, grid, report)
    svg.height = _draw_legend(svg, rows)
    return svg.document(title)
