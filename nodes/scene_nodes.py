"""Scene Prompt (one shot, chainable) and Scene Script (the official one-line tag format) -> the shot list."""

from __future__ import annotations

from comfy_api.latest import io

from ..pipeline import SceneList, SceneListError, SceneScriptError, parse_scene_script
from ..pipeline.noise import MAX_SEED
from ..pipeline.scene_list import conditioning_tensor, parse_recall_target, start_from_comfy_latent
from ..pipeline.scene_script import Transition
from . import host
from .sockets import CATEGORY, Scenes
from .validation import CombosChecked, shown, text_problem

MAX_START_FRAMES = 4096
"""The most latent frames Scene Prompt's start_frames takes (the run refuses more than the shot holds)."""

ANY_SHOT = 2**62
"""A shot number after every real one: recall targets are checked against it at submit time (syntax only)."""

DERIVED_SEED = -1
"""The Scene Prompt's shot_seed value for "derived from the sampler's seed and the shot's number". (Not named
"seed": the frontend gives every widget called seed a "control after generate" that re-rolls it each queue.)"""


class ScenePrompt(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingScenePrompt",
            display_name="Scene Prompt",
            category=CATEGORY,
            description=(
                "One shot of a multi-shot video: what happens, for how long, and how the video enters it from the "
                "shot before. Chain them: connect this node's scenes output to the next Scene Prompt's 'previous' "
                "input; the last one goes to the Autoregressive Sampler. Six chained nodes make a six-shot video."),
            inputs=[
                Scenes.Input("previous", optional=True,
                             tooltip="The shots before this one (the scenes output of another Scene Prompt). Leave "
                                     "empty for the first shot."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The text encoder (CLIPLoader with umt5_xxl, type wan). Needed unless you "
                                      "connect a conditioning; also used to match recalls by meaning."),
                io.String.Input("text", multiline=True, default="",
                                tooltip="What this shot shows: subject, place, action, camera. Describe it in full; "
                                        "each shot has its own prompt."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Optional: an already encoded prompt (CLIP Text Encode). When "
                                              "connected it is used instead of encoding the text; the text is then "
                                              "only a name for reports and recall matching."),
                io.Float.Input("duration", default=10.0, min=0.25, max=600.0, step=0.25,
                               tooltip="Length of the shot in seconds, in steps of 0.25 s (one latent frame at "
                                       "16 fps). The sampler generates whole blocks of 3 latent frames (12 video "
                                       "frames: 0.75 s at 16 fps): every shot but the last is rounded down to whole "
                                       "blocks (at least one), and the last shot takes the rest of the video, as "
                                       "the official code does."),
                io.Combo.Input("transition", options=Transition.labels(), default=Transition.SMOOTH.label,
                               tooltip="How the video enters this shot. smooth: the action continues (same scene, "
                                       "new moment). hard cut: a new place or subject, cleanly. recall: return to an "
                                       "earlier shot's scene. auto: decided from how similar the prompts are. "
                                       "Ignored on the first shot."),
                io.String.Input("recall_target", default="auto",
                                tooltip="For recall (or auto): which earlier shot to return to. 'auto' picks the most "
                                        "similar one; or give a shot number (e.g. 2) or a label (also a scene "
                                        "saved in a loaded scene pool)."),
                io.String.Input("label", default="",
                                tooltip="A short name for this shot (e.g. 'kitchen'), used in the report, on the "
                                        "timeline and as a recall target. Optional; must be unique."),
                io.Int.Input("shot_seed", default=DERIVED_SEED, min=DERIVED_SEED, max=MAX_SEED, optional=True,
                             tooltip="This shot's own noise seed, to re-roll it alone (with the sampler's per-shot "
                                     "noise; the shots before it are reused). -1: derived from the sampler's seed "
                                     "and the shot's number."),
                io.Latent.Input("start_latent", optional=True,
                                tooltip="Optional: start this shot from an image or from the end of a clip. Connect "
                                        "VAE Encode (Wan2.1 VAE) of an image resized to the video's size, or of a "
                                        "clip's last frames (9 frames make 3 latent frames, one block). They become "
                                        "the shot's first frames, kept as they are, and the memory's first frames "
                                        "of the scene; the rest of the shot continues from them."),
                io.Int.Input("start_frames", default=0, min=0, max=MAX_START_FRAMES, optional=True,
                             tooltip="With a start latent: use only its last N latent frames (3 = the last block of "
                                     "an encoded clip: encode the whole clip, so those frames carry its motion). "
                                     "0 uses every frame (an image is 1)."),
            ],
            outputs=[Scenes.Output(display_name="scenes",
                                   tooltip="The shots so far; connect to the next Scene Prompt or to the sampler.")],
        )

    @classmethod
    def validate_inputs(cls, recall_target: str | None = None):
        # the syntax only: which shots come before this one is known when the chain runs. The transition
        # (a combo), the duration range and the rest are ComfyUI's own checks, each on its input.
        problem = text_problem("Scene Prompt", "recall_target", recall_target)
        if problem or recall_target is None:
            return problem or True
        try:  # as the shot of a chain too long to be real, every shot number from 1 on is an earlier one
            parse_recall_target(recall_target, ANY_SHOT)
        except SceneListError:
            return (f"Scene Prompt: recall_target {shown(recall_target)} is not a shot number: shots are numbered "
                    "from 1; give an earlier shot's number (1, 2, ...), its label, or 'auto'")
        except ValueError:  # a number too long to read
            return (f"Scene Prompt: recall_target {shown(recall_target)} is not a shot number of this video; give "
                    "an earlier shot's number (1, 2, ...), its label, or 'auto'")
        return True

    @classmethod
    def execute(cls, text: str, duration: float, transition: str, recall_target: str, label: str,
                previous: SceneList | None = None, clip=None, conditioning=None,
                shot_seed: int = DERIVED_SEED, start_latent=None, start_frames: int = 0) -> io.NodeOutput:
        previous = previous if previous is not None else SceneList()
        number = len(previous) + 1
        start = None if start_latent is None else start_from_comfy_latent(start_latent, number, start_frames)
        if conditioning is not None:
            embeddings = conditioning_tensor(conditioning, number)
        elif clip is not None:
            if not (text or "").strip():
                raise SceneListError(f"shot {number}: the prompt text is empty; describe the shot")
            embeddings = host.encode_prompt(clip, text)
        else:
            raise SceneListError(f"shot {number}: connect a CLIP to encode the text, or a conditioning")
        return io.NodeOutput(previous.then(text, embeddings, duration, transition, recall_target, label, clip,
                                           None if shot_seed == DERIVED_SEED else shot_seed, start))


class SceneScript(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingSceneScript",
            display_name="Scene Script",
            category=CATEGORY,
            description=(
                "A whole multi-shot video in the official Echo-Forcing prompt format, on one line: shots separated "
                "by '|', each ending with its duration tag [10s] (then smooth), [10s#] (then a hard cut) or [10s@] "
                "(then a recall); an optional '; title | title' tail names the shots. Published prompt files paste "
                "in unchanged."),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder (CLIPLoader with umt5_xxl, type wan)."),
                io.String.Input("script", multiline=True,
                                default="A red fox trots through fresh snow in a pine forest at dawn [5s] | The fox "
                                        "pauses and looks up as snow falls from a branch [5s]; trail | pause",
                                tooltip="One video per script: 'shot one [10s] | shot two [10s#] | shot three [10s]; "
                                        "title1 | title2 | title3'. The marker on a shot's tag says how the NEXT shot "
                                        "is entered: none = smooth, # = hard cut, @ = recall."),
            ],
            outputs=[Scenes.Output(display_name="scenes", tooltip="The shots; connect to the Autoregressive Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, script: str | None = None):
        if script is None:  # linked from another node: checked when it runs
            return True
        problem = text_problem("Scene Script", "script", script)
        if problem:
            return problem
        try:
            parse_scene_script(script)
        except SceneScriptError as err:
            return f"Scene Script: bad scene script: {err}"
        return True

    @classmethod
    def execute(cls, clip, script: str) -> io.NodeOutput:
        warnings = []
        scenes = parse_scene_script(script, warnings)
        texts = [host.encode_prompt(clip, s.prompt) for s in scenes]
        return io.NodeOutput(SceneList.from_scenes(scenes, texts, clip, warnings))
