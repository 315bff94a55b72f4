"""Save Story and Load Story: keep a finished video with its memory state, and add shots to it in a later job
(or on another machine) without generating its shots again (``pipeline.story``)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..memory.files import file_names, named_file
from ..pipeline import SceneList
from ..pipeline.story import Story, StoryError
from . import host
from .sockets import CATEGORY, Scenes, StoryType
from .validation import CombosChecked, file_name_problem


def _story_file(name: str):
    return named_file(host.story_folder(), name, "story", StoryError)


class SaveStory(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingSaveStory",
            display_name="Save Story",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Saves the sampler's video with everything needed to add shots to it later: its shots, the "
                "memory at its end and its scene pool. A later job loads it with Load Story, chains new Scene "
                "Prompts after it and generates only the new shots. Written to "
                "output/echo_forcing/stories/<name>.safetensors; an existing story of that name is replaced."),
            inputs=[
                StoryType.Input("story", tooltip="The sampler's story output."),
                io.String.Input("name", default="echo_story",
                                tooltip="Story name: letters, digits, spaces, '_', '-', '.' (no folders)."),
            ],
            outputs=[],
        )

    @classmethod
    def validate_inputs(cls, name: str | None = None):
        return file_name_problem("Save Story", "name", name,
                                 lambda n: host.name_problem(host.story_folder(), n, "story")) or True

    @classmethod
    def execute(cls, story: Story, name: str) -> io.NodeOutput:
        if story is None:
            raise StoryError("the sampler kept no story for this run: a rolling-forcing run cannot be continued "
                             "(its windows span the shots); use another preset to save a story")
        if not isinstance(story, Story):
            raise StoryError(f"expected a story from the Autoregressive Sampler, got {type(story).__name__}")
        saved = story.save(_story_file(name))
        replaced = " (replacing the story of that name)" if saved.replaced else ""
        return io.NodeOutput(ui=ui.PreviewText(f"saved {len(story.shots)} shots ({story.frames} latent frames, "
                                               f"{saved.size / 2**20:.1f} MiB) as story '{saved.path.stem}'"
                                               f"{replaced}"))


class LoadStory(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingLoadStory",
            display_name="Load Story",
            category=CATEGORY,
            description=(
                "Loads a story saved by Save Story. Its shots come out as 'scenes': chain new Scene Prompts after "
                "it and the sampler continues the video after its last shot, generating only the new shots (with "
                "the story's model, size, steps, noise mode and memory settings; anything else is refused)."),
            inputs=[
                io.Combo.Input("story", options=file_names(host.story_folder()),
                               tooltip="A story in output/echo_forcing/stories (refresh with R after a run saved "
                                       "one)."),
            ],
            outputs=[Scenes.Output(display_name="scenes",
                                   tooltip="The story's shots; connect to a Scene Prompt's 'previous' (new shots) "
                                           "or to the sampler (the story's video as it is).")],
        )

    @classmethod
    def validate_inputs(cls, story: str | None = None):
        return file_name_problem(
            "Load Story", "story", story,
            lambda name: host.name_problem(host.story_folder(), name, "story", must_exist=True),
            "pick a story saved by Save Story (press R to refresh the list)") or True

    @classmethod
    def fingerprint_inputs(cls, story: str):
        return host.file_fingerprint(host.story_folder(), story, "story")

    @classmethod
    def execute(cls, story: str) -> io.NodeOutput:
        loaded = Story.load(_story_file(story))
        return io.NodeOutput(SceneList(loaded.shots.shots, loaded))
