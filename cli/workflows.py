"""``python -m echo_forcing workflows [--check]``: write the example workflows from one description, so both
formats always agree: ``example_workflows/`` in UI format (drag and drop, and the folder the frontend's template
browser reads, with a ``.jpg`` thumbnail of each) and ``workflows/api/`` in API format (for the queue).

Each workflow is a list of nodes (type, title, widget values, links); this module lays them out, numbers
the links and writes the frontend's graph format (version 0.4: positional ``widgets_values``, one input slot
per input in the node's definition order) and the API format. Loader nodes carry the frontend's model
download hints (``properties.models`` and the workflow-level ``models`` list: file name, URL, folder).
The browser test (tests/test_frontend_browser.py) proves that the real frontend turns every UI file into
exactly its API file.
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..models import registry
from ..safe_files import write_text

PACK_DIR = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = PACK_DIR / "example_workflows"
"""UI format; ComfyUI serves it to the frontend's template browser (``/api/workflow_templates``)."""
API_DIR = PACK_DIR / "workflows" / "api"
"""API format, for ``POST /prompt`` and ``python -m echo_forcing queue``."""

# ---- node definitions (input order as in /object_info's input_order: required, then optional) ---------------

W = "widget"


@dataclass(frozen=True)
class NodeDef:
    inputs: tuple[tuple[str, str], ...]
    """(name, type) in definition order; type "widget:<TYPE>" marks a widget input."""
    outputs: tuple[tuple[str, str], ...] = ()
    seed_control: str | None = None
    """Name of the INT widget followed by a control_after_generate value."""
    upload: bool = False
    """The node has the frontend's upload button, saved as one more widget value ("image") after its file combo."""


DEFS: dict[str, NodeDef] = {
    "CLIPLoader": NodeDef((("clip_name", "widget:COMBO"), ("type", "widget:COMBO"), ("device", "widget:COMBO")),
                          (("CLIP", "CLIP"),)),
    "VAELoader": NodeDef((("vae_name", "widget:COMBO"),), (("VAE", "VAE"),)),
    "VAEDecode": NodeDef((("samples", "LATENT"), ("vae", "VAE")), (("IMAGE", "IMAGE"),)),
    "VAEEncode": NodeDef((("pixels", "IMAGE"), ("vae", "VAE")), (("LATENT", "LATENT"),)),
    "LoadImage": NodeDef((("image", "widget:COMBO"),), (("IMAGE", "IMAGE"), ("MASK", "MASK")), upload=True),
    "ImageScale": NodeDef((("image", "IMAGE"), ("upscale_method", "widget:COMBO"), ("width", "widget:INT"),
                           ("height", "widget:INT"), ("crop", "widget:COMBO")), (("IMAGE", "IMAGE"),)),
    "LoadVideo": NodeDef((("file", "widget:COMBO"),), (("VIDEO", "VIDEO"),), upload=True),
    "GetVideoComponents": NodeDef((("video", "VIDEO"),), (("images", "IMAGE"), ("audio", "AUDIO"),
                                                         ("fps", "FLOAT"))),
    "CreateVideo": NodeDef((("images", "IMAGE"), ("fps", "widget:FLOAT"), ("audio", "AUDIO")), (("VIDEO", "VIDEO"),)),
    "SaveVideo": NodeDef((("video", "VIDEO"), ("filename_prefix", "widget:STRING"), ("format", "widget:COMBO"),
                          ("codec", "widget:COMBO"))),
    "EchoForcingLoadCausalDiT": NodeDef((("ckpt_name", "widget:COMBO"), ("weights", "widget:COMBO"),
                                         ("lora_name", "widget:COMBO"), ("weight_dtype", "widget:COMBO"),
                                         ("model_card", "widget:COMBO")),
                                        (("model", "MODEL"),)),
    "EchoForcingScenePrompt": NodeDef((("text", "widget:STRING"), ("duration", "widget:FLOAT"),
                                       ("transition", "widget:COMBO"), ("recall_target", "widget:STRING"),
                                       ("label", "widget:STRING"), ("previous", "ECHO_SCENES"), ("clip", "CLIP"),
                                       ("conditioning", "CONDITIONING"), ("shot_seed", "widget:INT"),
                                       ("start_latent", "LATENT"), ("start_frames", "widget:INT")),
                                      (("scenes", "ECHO_SCENES"),)),
    "EchoForcingSceneScript": NodeDef((("clip", "CLIP"), ("script", "widget:STRING")), (("scenes", "ECHO_SCENES"),)),
    "EchoForcingMemoryConfig": NodeDef((("preset", "widget:COMBO"), ("recall_matching", "widget:COMBO"),
                                        ("phase_compression", "widget:COMBO"), ("memory_decay", "widget:COMBO"),
                                        ("scene_pool_size", "widget:INT"), ("rope_positions", "widget:COMBO"),
                                        ("recall_scope", "widget:COMBO"), ("kv_storage", "widget:COMBO"),
                                        ("attention_bias", "widget:FLOAT")),
                                       (("config", "ECHO_MEMORY_CONFIG"),)),
    "EchoForcingSceneRecallPool": NodeDef((("pool", "widget:COMBO"),), (("pool", "ECHO_SCENE_POOL"),)),
    "EchoForcingSampler": NodeDef((("model", "MODEL"), ("scenes", "ECHO_SCENES"), ("seed", "widget:INT"),
                                   ("width", "widget:INT"), ("height", "widget:INT"), ("fps", "widget:FLOAT"),
                                   ("steps", "widget:INT"), ("shift", "widget:FLOAT"),
                                   ("config", "ECHO_MEMORY_CONFIG"), ("pool", "ECHO_SCENE_POOL"),
                                   ("noise", "widget:COMBO"), ("reuse_shots", "widget:BOOLEAN"),
                                   ("shot_cache_gb", "widget:FLOAT"), ("shot_cache_disk_gb", "widget:FLOAT"),
                                   ("stop_after_shot", "widget:INT"), ("vae", "VAE")),
                                  (("latent", "LATENT"), ("pool", "ECHO_SCENE_POOL"), ("report", "STRING"),
                                   ("story", "ECHO_STORY")),
                                  seed_control="seed"),
    "EchoForcingSaveScenePool": NodeDef((("pool", "ECHO_SCENE_POOL"), ("name", "widget:STRING"))),
    "EchoForcingSaveStory": NodeDef((("story", "ECHO_STORY"), ("name", "widget:STRING"))),
    "EchoForcingLoadStory": NodeDef((("story", "widget:COMBO"),), (("scenes", "ECHO_SCENES"),)),
}

# ---- model files (download hints) ------------------------------------------------------------------------

MODELS = {key: registry.workflow_hint(registry.by_name(name))
          for key, name in (("dit", registry.DEFAULT_DIT), ("text", "wan21-umt5-xxl-fp8"), ("vae", "wan21-vae"))}
"""The loaders' files as ``python -m echo_forcing models download`` writes them (``models/registry.py``): name
and folder, and the hub URL at the pinned commit where the written file is the hub file itself. A converted file
(the Self-Forcing .pt as safetensors) has no URL, so it gets no hint (the frontend's schema requires one); Load
Causal DiT's message names the download command instead."""


@dataclass
class Node:
    key: str
    type: str
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    """input name -> (source node key, output index)"""
    title: str | None = None
    column: int = 0
    models: tuple[str, ...] = ()


@dataclass
class Workflow:
    name: str
    description: str
    nodes: list[Node]


def _loaders() -> list[Node]:
    return [
        Node("dit", "EchoForcingLoadCausalDiT", {"ckpt_name": MODELS["dit"]["name"], "weights": "auto",
                                                 "lora_name": "none", "weight_dtype": "default",
                                                 "model_card": "auto"},
             column=0, models=("dit",)),
        Node("clip", "CLIPLoader", {"clip_name": MODELS["text"]["name"], "type": "wan", "device": "default"},
             column=0, models=("text",)),
        Node("vae", "VAELoader", {"vae_name": MODELS["vae"]["name"]}, column=0, models=("vae",)),
    ]


def _finish(sampler_links: dict, prefix: str, seed: int, extra: list | None = None) -> list[Node]:
    """Echo Memory Config, the sampler (832x480, 16 fps, the model card's steps, shift 5), decode, video and save."""
    nodes = [
        Node("memory", "EchoForcingMemoryConfig", {"preset": "echo-forcing", "recall_matching": "preset default",
                                                   "phase_compression": "preset default",
                                                   "memory_decay": "preset default", "scene_pool_size": 0,
                                                   "rope_positions": "preset default",
                                                   "recall_scope": "shots so far", "kv_storage": "auto",
                                                   "attention_bias": 0.0},
             column=2),
        Node("sampler", "EchoForcingSampler", {"seed": seed, "width": 832, "height": 480, "fps": 16.0, "steps": 0,
                                               "shift": 5.0, "noise": "per-shot", "reuse_shots": True,
                                               "shot_cache_gb": 8.0, "shot_cache_disk_gb": 0.0,
                                               "stop_after_shot": 0},
             {"model": ("dit", 0), **sampler_links, "config": ("memory", 0)}, column=3),
        Node("decode", "VAEDecode", {}, {"samples": ("sampler", 0), "vae": ("vae", 0)}, column=4),
        Node("video", "CreateVideo", {"fps": 16.0}, {"images": ("decode", 0)}, column=4),
        Node("save", "SaveVideo", {"filename_prefix": f"echo_forcing/{prefix}", "format": "auto", "codec": "auto"},
             {"video": ("video", 0)}, column=5),
    ]
    return nodes + (extra or [])


def _shots(shots: list[tuple[str, float, str, str, str]], after: tuple[str, int] | None = None,
           first: int = 1) -> list[Node]:
    """A chain of Scene Prompt nodes: (text, seconds, transition, recall target, label), the first one chained
    after ``after`` (a node output) when given; numbered from ``first``."""
    nodes = []
    for i, (text, seconds, transition, target, label) in enumerate(shots):
        links = {"clip": ("clip", 0)}
        if i:
            links["previous"] = (f"shot{first + i - 1}", 0)
        elif after is not None:
            links["previous"] = after
        nodes.append(Node(f"shot{first + i}", "EchoForcingScenePrompt",
                          {"text": text, "duration": seconds, "transition": transition, "recall_target": target,
                           "label": label, "shot_seed": -1}, links, title=f"Scene Prompt {first + i}: {label}",
                          column=1))
    return nodes


SMOOTH_SHOTS = [
    ("Static camera. In a sunlit pottery studio with shelves of drying bowls and a large window, an old man with a "
     "grey beard and a clay-stained apron sits at a pottery wheel and centres a lump of wet clay with both hands", 10.0,
     "smooth", "auto", "centring"),
    ("Static camera. In the same sunlit pottery studio, the same old man with the grey beard presses his thumbs "
     "into the spinning clay and opens it into a wide bowl, water glistening on his hands", 10.0, "smooth", "auto",
     "opening"),
    ("Static camera. In the same pottery studio, the same old man lifts the walls of the bowl higher, his fingers "
     "pulling thin even rings while the wheel spins steadily", 10.0, "smooth", "auto", "lifting"),
    ("Static camera. In the same pottery studio, the same old man slows the wheel, smooths the rim of the tall bowl "
     "with a wet sponge and leans back to look at it", 10.0, "smooth", "auto", "smoothing"),
    ("Static camera. In the same pottery studio, the same old man cuts the bowl free from the wheel with a thin "
     "wire, holding the wire taut with both hands", 10.0, "smooth", "auto", "cutting"),
    ("Static camera. In the same pottery studio, the same old man carries the finished bowl on a wooden board to "
     "the shelf by the window and sets it among the others", 10.0, "smooth", "auto", "shelf"),
]

HARD_CUT_SCRIPT = (
    "Cinematic realism. A young woman with a red scarf and a grey wool coat walks along a rainy night street lit by "
    "neon shop signs, reflections shimmering on the wet pavement[10s#] | Cinematic realism. The same young woman "
    "with the red scarf sits at a window table in a quiet cafe at dawn, holding a cup of coffee with both hands as "
    "steam rises[10s#] | Cinematic realism. The same young woman with the red scarf stands on a windy seaside cliff "
    "under a pale sky, her coat flapping as waves break far below[10s#] | Cinematic realism. The same young woman "
    "with the red scarf browses the shelves of an old bookshop with warm lamps, pulling out a worn hardback[10s#] | "
    "Cinematic realism. The same young woman with the red scarf rides a nearly empty tram through the city at "
    "sunset, leaning her head against the window[10s#] | Cinematic realism. The same young woman with the red scarf "
    "climbs the stairs to a rooftop at night and looks up at fireworks bursting over the skyline[10s]; street | "
    "cafe | cliff | bookshop | tram | rooftop")

RECALL_SHOTS = [
    ("Static shot, cinematic realism. In a greenhouse full of tall tropical plants with misted glass walls, a young "
     "man with curly brown hair in a green apron waters rows of orchids with a brass can", 10.0, "smooth", "auto",
     "greenhouse"),
    ("Static shot, cinematic realism. In a busy train station hall with a high arched roof and departure boards, "
     "the same young man with curly brown hair in a navy jacket checks a paper ticket", 10.0, "hard cut", "auto",
     "station"),
    ("Static shot, cinematic realism. On a snowy mountain trail between pine trees, the same young man with curly "
     "brown hair in a red parka stops and drinks from a thermos", 10.0, "hard cut", "auto", "trail"),
    ("Static shot, cinematic realism. Back in the greenhouse full of tall tropical plants with misted glass walls, "
     "the same young man in the green apron repots an orchid at a wooden bench", 10.0, "recall", "greenhouse",
     "greenhouse again"),
    ("Static shot, cinematic realism. Back in the train station hall with the high arched roof, the same young man "
     "in the navy jacket runs to catch a departing train", 10.0, "recall", "auto", "station again"),
    ("Static shot, cinematic realism. Back on the snowy mountain trail between pine trees, the same young man in the "
     "red parka reaches the summit and looks over the valley", 10.0, "recall", "3", "trail again"),
]

LONG_PROMPT = ("A drone shot gliding slowly over a winding river through an autumn forest, orange and yellow trees on "
               "both banks, morning mist over the water, soft golden light, smooth continuous camera motion")


def _six_shot_smooth() -> Workflow:
    nodes = _loaders() + _shots(SMOOTH_SHOTS)
    return Workflow("six_shot_smooth", "Six shots joined by smooth transitions: one continuous action.",
                    nodes + _finish({"scenes": ("shot6", 0)}, "six_shot_smooth", 42))


def _six_shot_hard_cut() -> Workflow:
    script = Node("script", "EchoForcingSceneScript", {"script": HARD_CUT_SCRIPT}, {"clip": ("clip", 0)},
                  column=1)
    return Workflow("six_shot_hard_cut", "Six shots joined by hard cuts, written as one Scene Script line (the "
                    "official prompt format; the batch command fills this node).",
                    [*_loaders(), script, *_finish({"scenes": ("script", 0)}, "six_shot_hard_cut", 7)])


def _recall_abcabc() -> Workflow:
    nodes = _loaders() + _shots(RECALL_SHOTS)
    pool = Node("pool_in", "EchoForcingSceneRecallPool", {"pool": "new (empty)"}, column=2)
    save = Node("pool_out", "EchoForcingSaveScenePool", {"name": "recall_abcabc"}, {"pool": ("sampler", 1)},
                column=5)
    return Workflow("recall_abcabc", "A-B-C-A-B-C: three places, then a return to each (by label, automatic and "
                    "by shot number); the scene pool is saved for later jobs.",
                    [*nodes, pool, *_finish({"scenes": ("shot6", 0), "pool": ("pool_in", 0)}, "recall_abcabc", 11,
                                            extra=[save])])


def _long_video() -> Workflow:
    shot = Node("shot1", "EchoForcingScenePrompt", {"text": LONG_PROMPT, "duration": 60.0, "transition": "smooth",
                                                     "recall_target": "auto", "label": "river", "shot_seed": -1},
                {"clip": ("clip", 0)}, title="Scene Prompt: 60 s", column=1)
    return Workflow("long_video_60s", "One prompt for 60 seconds (960 frames) with bounded memory.",
                    [*_loaders(), shot, *_finish({"scenes": ("shot1", 0)}, "long_video_60s", 3)])


MORE_SMOOTH_SHOTS = [
    ("Static camera. In the same sunlit pottery studio, the same old man with the grey beard dips a brush in white "
     "glaze and paints slow rings around the dry bowl on the shelf", 10.0, "smooth", "auto", "glazing"),
    ("Static camera. In the same pottery studio, the same old man opens the door of a brick kiln, warm orange light "
     "on his face, and slides the glazed bowl inside", 10.0, "smooth", "auto", "kiln"),
    ("Static camera. Back at the pottery wheel in the sunlit studio, the same old man sits down and centres a new "
     "lump of wet clay with both hands", 10.0, "recall", "centring", "again"),
]
STORY_NAME = "pottery_six_shots"


def _story_six_shots() -> Workflow:
    nodes = _loaders() + _shots(SMOOTH_SHOTS)
    save = Node("story_out", "EchoForcingSaveStory", {"name": STORY_NAME}, {"story": ("sampler", 3)}, column=5)
    return Workflow("story_1_six_shots", "Part 1 of a story: six smooth shots, saved with Save Story so a later "
                    "job can add shots without generating these again.",
                    nodes + _finish({"scenes": ("shot6", 0)}, "story_1_six_shots", 2026, extra=[save]))


def _story_three_more() -> Workflow:
    story = Node("story_in", "EchoForcingLoadStory", {"story": STORY_NAME}, column=1)
    nodes = [*_loaders(), story, *_shots(MORE_SMOOTH_SHOTS, after=("story_in", 0), first=7)]
    save = Node("story_out", "EchoForcingSaveStory", {"name": f"{STORY_NAME}_and_three"}, {"story": ("sampler", 3)},
                column=5)
    return Workflow("story_2_three_more", "Part 2 of the story (after story_1_six_shots): Load Story, three more "
                    "shots chained after it; only the new shots are generated and the video holds all nine.",
                    nodes + _finish({"scenes": ("shot9", 0)}, "story_2_three_more", 2026, extra=[save]))


START_IMAGE = "example.png"
"""The image the image-to-video workflow opens with: the one every ComfyUI install has in its input folder (pick
your own in Load Image)."""
START_CLIP = "clip.mp4"
"""The clip the continue-a-clip workflow loads from ComfyUI's input folder (upload yours in Load Video)."""
SIZE = {"width": 832, "height": 480}

IMAGE_SHOTS = [
    ("Cinematic realism, slow push-in. The scene of the picture comes to life: soft daylight, gentle wind, the "
     "main subject in the centre of the frame begins to move", 10.0, "smooth", "auto", "opening"),
    ("Cinematic realism. The same scene, the camera drifts slowly to the left while the subject keeps moving, "
     "light shifting across the surfaces", 10.0, "smooth", "auto", "drift"),
    ("Cinematic realism. A close view of the same subject, fine details and textures, shallow depth of field", 10.0,
     "smooth", "auto", "close"),
    ("Cinematic realism. The same place at dusk, warm lamps switch on, the subject in the same spot", 10.0,
     "hard cut", "auto", "dusk"),
    ("Cinematic realism. Back in the daylight scene of the first shot, the subject as in the picture", 10.0,
     "recall", "opening", "daylight again"),
    ("Cinematic realism. The camera pulls slowly back from the same scene to a wide view", 10.0, "smooth", "auto",
     "wide"),
]

CLIP_SHOTS = [
    ("Cinematic realism. The action of the clip goes on, same place, same subject, same light, the camera keeps "
     "its motion", 5.0, "smooth", "auto", "continued"),
    ("Cinematic realism. The same subject in the same place, the movement slows down and the subject turns "
     "towards the camera", 5.0, "smooth", "auto", "turn"),
    ("Cinematic realism. The camera rises slowly above the same place for a wide final view", 5.0, "smooth", "auto",
     "rise"),
]


def _encoded(source: tuple[str, int], column: int = 0) -> list[Node]:
    """Resize the frames to the video's size (centre crop) and encode them with the Wan VAE."""
    return [
        Node("scale", "ImageScale", {"upscale_method": "lanczos", **SIZE, "crop": "center"}, {"image": source},
             column=column),
        Node("encode", "VAEEncode", {}, {"pixels": ("scale", 0), "vae": ("vae", 0)}, column=column),
    ]


def _opened(shots: list, start_frames: int) -> list[Node]:
    """Scene Prompt nodes for ``shots``, the first opening on the encoded frames (its last ``start_frames``)."""
    nodes = _shots(shots)
    nodes[0].links["start_latent"] = ("encode", 0)
    nodes[0].widgets["start_frames"] = start_frames
    return nodes


def _image_to_six_shots() -> Workflow:
    image = Node("image", "LoadImage", {"image": START_IMAGE}, column=0)
    shots = _opened(IMAGE_SHOTS, 0)
    return Workflow("image_to_six_shots", "Image to video: the first of six shots opens on a picture (Load Image, "
                    "resized and encoded with the Wan VAE into Scene Prompt's start_latent); a hard cut and a recall "
                    "bring the picture's scene back.",
                    [*_loaders(), image, *_encoded(("image", 0)), *shots,
                     *_finish({"scenes": ("shot6", 0)}, "image_to_six_shots", 5)])


def _continue_clip() -> Workflow:
    clip = Node("clip_in", "LoadVideo", {"file": START_CLIP}, column=0)
    frames = Node("frames", "GetVideoComponents", {}, {"video": ("clip_in", 0)}, column=0)
    shots = _opened(CLIP_SHOTS, 3)
    return Workflow("continue_clip", "Continue a clip: Load Video, encode it with the Wan VAE, and open three more "
                    "shots on its last block (Scene Prompt's start_frames 3); the new video starts with the clip's "
                    "last 9 frames.",
                    [*_loaders(), clip, frames, *_encoded(("frames", 0)), *shots,
                     *_finish({"scenes": ("shot3", 0)}, "continue_clip", 8)])


WORKFLOWS = (_six_shot_smooth, _six_shot_hard_cut, _recall_abcabc, _long_video, _story_six_shots, _story_three_more,
             _image_to_six_shots, _continue_clip)

# ---- writers ---------------------------------------------------------------------------------------------


def api_format(flow: Workflow) -> dict:
    ids = {n.key: str(i + 1) for i, n in enumerate(flow.nodes)}
    out = {}
    for n in flow.nodes:
        inputs = dict(n.widgets)
        inputs.update({name: [ids[src], slot] for name, (src, slot) in n.links.items()})
        out[ids[n.key]] = {"inputs": inputs, "class_type": n.type, "_meta": {"title": n.title or n.type}}
    return out


def _size(node: Node) -> list[int]:
    if node.type == "EchoForcingScenePrompt":
        return [400, 300]
    if node.type == "EchoForcingSceneScript":
        return [440, 420]
    if node.type == "EchoForcingSampler":
        return [440, 440]
    return [320, 60 + 26 * len([i for i in DEFS[node.type].inputs if i[1].startswith(W)]) + 26]


def ui_format(flow: Workflow) -> dict:
    ids = {n.key: i + 1 for i, n in enumerate(flow.nodes)}
    links, outputs_links, input_links = [], {}, {}
    for n in flow.nodes:
        definition = DEFS[n.type]
        for name, (src, slot) in n.links.items():
            target_slot = [i for i, _ in definition.inputs].index(name)
            link_type = DEFS[flow.nodes[ids[src] - 1].type].outputs[slot][1]
            links.append([len(links) + 1, ids[src], slot, ids[n.key], target_slot, link_type])
            outputs_links.setdefault((ids[src], slot), []).append(len(links))
            input_links[(n.key, name)] = len(links)
    column_y: dict[int, int] = {}
    nodes = []
    for order, n in enumerate(flow.nodes):
        definition = DEFS[n.type]
        size = _size(n)
        y = column_y.get(n.column, 40)
        column_y[n.column] = y + size[1] + 60
        inputs = []
        for name, kind in definition.inputs:
            link = input_links.get((n.key, name))
            if kind.startswith(W):
                if name not in n.widgets and link is None:
                    continue  # an optional widget left out (the frontend still builds it with its default)
                inputs.append({"localized_name": name, "name": name, "type": kind.split(":", 1)[1],
                               "widget": {"name": name}, "link": link})
            else:
                inputs.append({"localized_name": name, "name": name, "type": kind, "link": link})
        outputs = [{"localized_name": name, "name": name, "type": kind,
                    "links": outputs_links.get((ids[n.key], slot), [])}
                   for slot, (name, kind) in enumerate(definition.outputs)]
        widgets = []
        for name, kind in definition.inputs:
            if kind.startswith(W) and name in n.widgets:
                widgets.append(n.widgets[name])
                if name == definition.seed_control:
                    widgets.append("fixed")
                if definition.upload:
                    widgets.append("image")
        properties = {"Node name for S&R": n.type}
        hints = [MODELS[m] for m in n.models if "url" in MODELS[m]]
        if hints:
            properties["models"] = hints
        node = {"id": ids[n.key], "type": n.type, "pos": [40 + 460 * n.column, y], "size": size, "flags": {},
                "order": order, "mode": 0, "inputs": inputs, "outputs": outputs, "properties": properties,
                "widgets_values": widgets}
        if n.title:
            node["title"] = n.title
        nodes.append(node)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"echo-forcing/workflows/{flow.name}")),  # the frontend wants a UUID
        "revision": 0,
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}, "echo_forcing": {"description": flow.description}},
        "models": [MODELS[m] for m in ("dit", "text", "vae") if "url" in MODELS[m]],
        "version": 0.4,
    }


def render(examples: Path = EXAMPLES_DIR, api: Path = API_DIR) -> dict[Path, str]:
    """File path -> JSON text of every workflow file."""
    files = {}
    for make in WORKFLOWS:
        flow = make()
        files[examples / f"{flow.name}.json"] = json.dumps(ui_format(flow), indent=1, ensure_ascii=False) + "\n"
        files[api / f"{flow.name}.json"] = json.dumps(api_format(flow), indent=1, ensure_ascii=False) + "\n"
    return files


def write(examples: Path = EXAMPLES_DIR, api: Path = API_DIR, check: bool = False) -> list[Path]:
    """Write the files (atomically), or with ``check`` return those that differ from what would be written."""
    stale = []
    for path, text in render(examples, api).items():
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not check:
            write_text(path, text)
    return stale


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workflows", help="write the example workflows: UI format into example_workflows/, API "
                                         "format into workflows/api/",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report files that are out of date (exit 1 if any)")

    def run(args) -> int:
        stale = write(check=args.check)
        for path in stale:
            print(("out of date: " if args.check else "wrote ") + str(path.relative_to(PACK_DIR)))
        return 1 if args.check and stale else 0
    p.set_defaults(func=run)
