"""The nodes' submit-time checks (``validate_inputs``) against missing, linked, hostile and wrong-typed inputs,
without ComfyUI: small stand-ins for ``comfy_api.latest``, ``comfy.*`` and ``folder_paths`` are put in
``sys.modules`` for this module only (and removed after it, so no other test sees them).

ComfyUI passes ``validate_inputs`` only the inputs named in its signature that the prompt holds (a linked one as
None, a missing one not at all) and repeats a returned message on every argument it passed; so each node checks
only what ComfyUI cannot, every argument defaults to None, and no input makes it raise.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import types
from pathlib import Path

import pytest
import torch

# ---- ComfyUI stand-ins ------------------------------------------------------------------------------------


class _Spec:
    """One declared input or output: its ComfyUI type name and keyword arguments."""

    def __init__(self, io_type: str, id: str | None = None, **options):
        self.io_type, self.id, self.options = io_type, id, options


class _Type:
    def __init__(self, io_type: str):
        self.io_type = io_type

    def Input(self, id: str, **options) -> _Spec:
        return _Spec(self.io_type, id, **options)

    def Output(self, **options) -> _Spec:
        return _Spec(self.io_type, None, **options)


class _Schema(types.SimpleNamespace):
    pass


class _ComfyNode:
    @classmethod
    def INPUT_TYPES(cls, include_hidden=True, return_schema=False):
        schema = cls.define_schema()
        out: dict = {"required": {}}
        for spec in schema.inputs:
            options = {k: v for k, v in spec.options.items() if k != "optional"}
            out.setdefault("optional" if spec.options.get("optional") else "required", {})[spec.id] = (
                spec.io_type, options)
        return (out, schema) if return_schema else out


class _NodeOutput:
    def __init__(self, *result, ui=None):
        self.result, self.ui = result, ui


def _stub_modules(root: Path) -> dict[str, types.ModuleType]:
    io = types.ModuleType("comfy_api.latest.io")
    for name, io_type in (("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"), ("Boolean", "BOOLEAN"),
                          ("Combo", "COMBO"), ("Model", "MODEL"), ("Clip", "CLIP"), ("Conditioning", "CONDITIONING"),
                          ("Latent", "LATENT"), ("Vae", "VAE")):
        setattr(io, name, _Type(io_type))
    io.Custom = _Type
    io.Schema = _Schema
    io.ComfyNode = _ComfyNode
    io.NodeOutput = _NodeOutput
    io.Hidden = types.SimpleNamespace(unique_id="UNIQUE_ID")
    ui = types.ModuleType("comfy_api.latest.ui")
    ui.PreviewText = lambda text: {"text": [text]}
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ui = io, ui
    latest.ComfyExtension = type("ComfyExtension", (), {})
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.latest = latest

    folder_paths = types.ModuleType("folder_paths")
    models = root / "models"
    folder_paths.models_dir = str(models)
    folder_paths.supported_pt_extensions = {".safetensors", ".pt"}
    folder_paths.folder_names_and_paths = {}

    def folder(name: str) -> Path:
        return models / name

    def get_filename_list(name: str) -> list[str]:
        where = folder(name)
        return sorted(p.name for p in where.iterdir() if p.is_file()) if where.is_dir() else []

    def get_full_path(name: str, filename: str) -> str | None:
        path = folder(name) / Path("/", filename).resolve().relative_to("/")  # ComfyUI also keeps names inside
        return str(path) if path.is_file() else None

    folder_paths.get_filename_list = get_filename_list
    folder_paths.get_full_path = get_full_path
    folder_paths.get_output_directory = lambda: str(root / "output")
    folder_paths.get_temp_directory = lambda: str(root / "temp")
    folder_paths.add_model_folder_path = lambda *a, **k: None

    comfy = types.ModuleType("comfy")
    parts = {name: types.ModuleType(f"comfy.{name}") for name in ("model_management", "sd", "utils")}
    for name, module in parts.items():
        setattr(comfy, name, module)
    return {"comfy_api": comfy_api, "comfy_api.latest": latest, "comfy_api.latest.io": io,
            "comfy_api.latest.ui": ui, "folder_paths": folder_paths, "comfy": comfy,
            **{f"comfy.{n}": m for n, m in parts.items()}}


NODE_MODULES = ("validation", "sockets", "host", "load_causal_dit", "scene_nodes", "memory_nodes", "story_nodes",
                "sampler", "extension")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """The pack's node modules imported against the stand-ins, with one model, LoRA, pool and story on disk."""
    root = tmp_path_factory.mktemp("comfy")
    for path in ("models/diffusion_models/tiny_dit.safetensors", "models/loras/tiny_lora.pt",
                 "output/echo_forcing/scene_pools/saved pool.safetensors",
                 "output/echo_forcing/stories/tale.safetensors"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")
    stubs = _stub_modules(root)
    before = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        modules = {name: importlib.import_module(f"echo_forcing.nodes.{name}") for name in NODE_MODULES}
        yield types.SimpleNamespace(**modules, nodes=modules["extension"].NODES, root=root)
    finally:
        for name in [m for m in sys.modules if m == "echo_forcing.nodes" or m.startswith("echo_forcing.nodes.")]:
            del sys.modules[name]
        for name, module in before.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _validated(pack) -> list:
    return [n for n in pack.nodes if "validate_inputs" in vars(n)]


def _schema(node):
    return node.define_schema()


def _inputs(node) -> dict[str, _Spec]:
    return {spec.id: spec for spec in _schema(node).inputs}


def _arguments(node) -> list[str]:
    return inspect.getfullargspec(node.validate_inputs).args[1:]


# ---- the signatures ComfyUI reads ---------------------------------------------------------------------------


def test_every_node_validates_only_named_inputs_each_defaulting_to_none(pack):
    assert {n.__name__ for n in _validated(pack)} == {
        "LoadCausalDiT", "AutoregressiveSampler", "ScenePrompt", "SceneScript", "SceneRecallPool", "SaveScenePool",
        "SaveStory", "LoadStory"}  # Echo Memory Config has only combos and a range: ComfyUI checks them all
    for node in _validated(pack):
        spec = inspect.getfullargspec(node.validate_inputs)
        assert spec.varargs is None and spec.varkw is None and not spec.kwonlyargs, node  # no **kwargs: ComfyUI
        # would then pass (and skip its own checks of) every input, and repeat an error on each
        names = _arguments(node)
        assert names and set(names) <= set(_inputs(node)), node
        assert spec.defaults == (None,) * len(names), node  # a missing input must not raise TypeError


def test_missing_and_linked_inputs_are_left_to_comfyui_and_the_run(pack):
    for node in _validated(pack):
        assert node.validate_inputs() is True, node  # missing: ComfyUI says "Required input is missing"
        assert node.validate_inputs(**dict.fromkeys(_arguments(node))) is True, node  # linked: None


def test_the_schema_defaults_pass(pack):
    defaults = {"ckpt_name": "tiny_dit.safetensors", "story": "tale"}  # combos of files on disk
    for node in _validated(pack):
        inputs = _inputs(node)
        values = {n: defaults.get(n, inputs[n].options.get("default")) for n in _arguments(node)}
        assert node.validate_inputs(**values) is True, (node, values)


HOSTILE = [
    {}, {"a": 1}, [], ["x", 0], (), 10**30, -(10**30), 10**5000, -(10**5000), float("nan"), float("inf"), -1, 0,
    True, False, 1.5, b"bytes", "", " ", "\x00", "../x", "..", "/etc/passwd", "C:\\x", "x" * 100_000, "\n",
    "ok name", "0", "9" * 5000, object(),
]


class _BadRepr:
    def __repr__(self):
        raise RuntimeError("repr failed")

    __str__ = __repr__


@pytest.mark.parametrize("value", [*HOSTILE, _BadRepr()], ids=lambda v: type(v).__name__)
def test_hostile_values_give_a_message_or_true_and_never_raise(pack, value):
    for node in _validated(pack):
        display = _schema(node).display_name
        for name in _arguments(node):
            result = node.validate_inputs(**{name: value})
            assert result is True or isinstance(result, str), (node, name, result)
            if isinstance(result, str):
                assert result.startswith(display + ": ") and name in result, result
                assert len(result) < 600, (node, name, len(result))  # values are cut to 80 characters


# ---- the messages ------------------------------------------------------------------------------------------


def test_sampler_frame_sizes_must_be_multiples_of_16_within_the_widget_range(pack):
    check = pack.sampler.AutoregressiveSampler.validate_inputs
    assert check(width=832, height=480) is True and check(width=16, height=4096) is True
    assert check(width=500) == "Autoregressive Sampler: width 500 is not a multiple of 16; use 496 or 512"
    assert check(height=4090) == "Autoregressive Sampler: height 4090 is not a multiple of 16; use 4080 or 4096"
    assert check(height=0) == ("Autoregressive Sampler: height 0 is below the minimum of 16; use 16 or more (a "
                               "multiple of 16)")
    assert check(width=8, height=8).count("Autoregressive Sampler:") == 2  # both named, one message
    assert "width 4112 is above the maximum of 4096" in check(width=4112)
    huge = check(width=10**5000)
    assert "above the maximum" in huge and len(huge) < 300  # its repr cannot even be built: named by type
    assert "is not a whole number of pixels" in check(width=480.0)
    assert "is not a whole number of pixels" in check(height="480")
    assert "is not a whole number of pixels" in check(width=True)
    widths = _inputs(pack.sampler.AutoregressiveSampler)
    for name in ("width", "height"):  # the widget steps like the check
        opts = widths[name].options
        assert (opts["min"], opts["max"], opts["step"]) == (16, 4096, 16) and opts["default"] % 16 == 0


@pytest.mark.parametrize("target", ["auto", "AUTO", "", "1", "#2", "shot 3", "12", "zero", "kitchen", "2nd take",
                                    "-1"])
def test_recall_targets_are_only_checked_for_syntax(pack, target):
    assert pack.scene_nodes.ScenePrompt.validate_inputs(recall_target=target) is True


@pytest.mark.parametrize("target", ["0", " 0 ", "#0", "shot 0", "Shot 00"])
def test_recall_target_zero_is_refused_with_shots_counted_from_one(pack, target):
    message = pack.scene_nodes.ScenePrompt.validate_inputs(recall_target=target)
    assert message.startswith(f"Scene Prompt: recall_target {target!r} is not a shot number: shots are numbered "
                              "from 1")
    assert "0-based" not in message and "index" not in message


def test_model_file_names(pack):
    check = pack.load_causal_dit.LoadCausalDiT.validate_inputs
    assert check(ckpt_name="tiny_dit.safetensors") is True
    models = pack.load_causal_dit._models_dir()  # ComfyUI's models folder (a placeholder if the path is long)
    assert models in (str(pack.root / "models"), "<ComfyUI>/models")
    for name in ("nope.pt", "../loras/tiny_lora.pt", "/etc/passwd", "tiny_dit"):
        message = check(ckpt_name=name)
        assert message == (f"Load Causal DiT: ckpt_name {name!r} was not found in models/causal_dit or "
                           "models/diffusion_models; put the checkpoint there and press R to refresh, or pick one "
                           "from the list. Known checkpoints, by NAME: self-forcing-dmd, causvid, longlive-base, "
                           "causal-forcing-chunkwise, causal-forcing-framewise, causal-forcing-pp-2step, "
                           "causal-forcing-pp-1step (python -m echo_forcing models list says which file each writes)"
                           f"; get one with: python -m echo_forcing models download NAME --to {models}")
    assert check(ckpt_name="self_forcing_dmd.safetensors") == (  # a registry file: the command that writes it
        "Load Causal DiT: ckpt_name 'self_forcing_dmd.safetensors' is not in models/diffusion_models yet; download "
        f"it with: python -m echo_forcing models download self-forcing-dmd --to {models}, then press R to refresh")
    tooltips = {name: spec.options["tooltip"] for name, spec in _inputs(pack.load_causal_dit.LoadCausalDiT).items()}
    assert "self-forcing-dmd, causvid" in tooltips["ckpt_name"]
    assert "models download longlive-lora" in tooltips["lora_name"]
    assert "is not a file name" in check(ckpt_name="  ")


def test_pool_and_story_names(pack):
    pool = pack.memory_nodes.SceneRecallPool.validate_inputs
    assert pool(pool=pack.memory_nodes.NEW_POOL) is True and pool(pool="saved pool") is True
    assert pool(pool="saved pool.safetensors") is True
    message = pool(pool="../x")
    assert message.startswith("Scene Recall Pool: pool: invalid scene pool name '../x'")
    assert message.endswith("pick a saved pool or 'new (empty)' (press R to refresh the list)")
    assert "was not found" in pool(pool="other")
    save = pack.memory_nodes.SaveScenePool.validate_inputs
    assert save(name="a new pool") is True and "invalid scene pool name" in save(name="../x")
    story = pack.story_nodes.LoadStory.validate_inputs
    assert story(story="tale") is True
    assert story(story="../tale").startswith("Load Story: story: invalid story name '../tale'")
    assert "was not found" in story(story="missing") and "pick a story saved by Save Story" in story(story="nope")
    assert pack.story_nodes.SaveStory.validate_inputs(name="x/y").startswith("Save Story: name: invalid story name")


def test_scene_script_errors_name_the_node_and_the_scene(pack):
    check = pack.scene_nodes.SceneScript.validate_inputs
    assert check(script=_inputs(pack.scene_nodes.SceneScript)["script"].options["default"]) is True
    message = check(script="a fox in the snow [10x] | a lighthouse [5s]")
    assert message.startswith("Scene Script: bad scene script: scene 1") and "[10x]" in message
    assert check(script={"a": 1}) == "Scene Script: script must be text, got dict {'a': 1}"


def test_messages_use_the_display_names_of_the_schemas(pack):
    names = {node: _schema(node).display_name for node in pack.nodes}
    assert set(names.values()) >= {"Load Causal DiT", "Autoregressive Sampler", "Scene Prompt", "Scene Script",
                                   "Scene Recall Pool", "Save Scene Pool", "Save Story", "Load Story"}
    for node in _validated(pack):
        for name in _arguments(node):
            message = node.validate_inputs(**{name: {"not": "text"}})
            assert isinstance(message, str) and message.startswith(names[node] + ": " + name), message


def test_shown_values_are_short_and_never_raise(pack):
    shown = pack.validation.shown
    assert shown("abc") == "'abc'" and shown(500) == "500"
    assert len(shown("x" * 1000)) == 80 and shown("x" * 1000).endswith("...")
    assert shown(_BadRepr()) == "<_BadRepr>" and shown(10**5000) == "<int>"


# ---- ComfyUI v0.3.64: V3 combos are checked as V1 combos ---------------------------------------------------


def test_v1_combos_turn_only_v3_combos_into_option_lists(pack):
    inputs = {"required": {"preset": ("COMBO", {"options": ["a", "b"], "default": "a"}),
                           "width": ("INT", {"min": 16}), "clip": ("CLIP", {})},
              "optional": {"noise": ("COMBO", {"options": ["x"]})}, "hidden": {"id": "UNIQUE_ID"}}
    out = pack.validation.v1_combos(inputs)
    assert out["required"]["preset"] == (["a", "b"], {"options": ["a", "b"], "default": "a"})
    assert out["optional"]["noise"][0] == ["x"]
    assert out["required"]["width"] == inputs["required"]["width"] and out["hidden"] == inputs["hidden"]
    assert inputs["required"]["preset"][0] == "COMBO"  # the input is not changed


def test_combo_inputs_are_listed_for_validation_only_on_a_host_that_skips_v3_combos(pack, monkeypatch):
    config = pack.memory_nodes.EchoMemoryConfigNode
    monkeypatch.setattr(pack.validation, "_SKIPS", [False])
    assert config.INPUT_TYPES()["required"]["preset"][0] == "COMBO"
    monkeypatch.setattr(pack.validation, "_SKIPS", [True])
    listed, schema = config.INPUT_TYPES(return_schema=True)
    assert listed["required"]["preset"][0][0] == "echo-forcing" and schema.display_name == "Echo Memory Config"
    assert listed["optional"]["recall_scope"][0] == listed["optional"]["recall_scope"][1]["options"]
    assert listed["required"]["scene_pool_size"][0] == "INT"
    for node in pack.nodes:  # every node takes part
        assert isinstance(node.INPUT_TYPES(), dict) and issubclass(node, pack.validation.CombosChecked), node


@pytest.mark.parametrize(("source", "has_finalized", "expected"), [
    ("if isinstance(input_type, list):\n        pass", False, True),  # v0.3.64
    ("if isinstance(input_type, list) or input_type == io.Combo.io_type:\n        pass", False, False),
    ("if isinstance(input_type, list):\n        pass", True, False),  # v0.28.0's parser needs V3 type names
])
def test_the_host_check_reads_comfyuis_own_validation(pack, monkeypatch, tmp_path, source, has_finalized,
                                                      expected):
    path = tmp_path / "fake_execution.py"
    path.write_text(f"def validate_inputs(input_type, io=None):\n    {source}\n", encoding="utf-8")
    spec = importlib.util.spec_from_file_location("fake_execution", path)
    execution = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execution)
    io_module = types.ModuleType("comfy_api.latest._io")
    if has_finalized:
        io_module.get_finalized_class_inputs = lambda *a: None
    monkeypatch.setitem(sys.modules, "execution", execution)
    monkeypatch.setitem(sys.modules, "comfy_api.latest._io", io_module)
    assert pack.validation._host_skips_v3_combos() is expected
    monkeypatch.delitem(sys.modules, "execution")
    assert pack.validation._host_skips_v3_combos() is False  # not known: ComfyUI's behaviour is left alone


# ---- what the nodes put into ComfyUI's messages and history --------------------------------------------------


def test_node_outputs_have_short_safe_reprs(pack):
    config = pack.memory_nodes.EchoMemoryConfigNode.execute("echo-forcing", "idf", "on", "off", 0).result[0]
    pool = pack.memory_nodes.SceneRecallPool.execute(pack.memory_nodes.NEW_POOL).result[0]
    cond = [[torch.zeros(1, 4, 8), {"pooled_output": None}]]
    shots = pack.scene_nodes.ScenePrompt.execute("a fox", 5.0, "smooth", "auto", "forest", conditioning=cond).result[0]
    shots = pack.scene_nodes.ScenePrompt.execute("", 5.0, "recall", "1", "", previous=shots,
                                                 conditioning=cond).result[0]
    for value in (config, pool, shots):
        for text in (str(value), repr(value)):
            assert 0 < len(text) < 400, text
    assert repr(shots) == "SceneList(2 shots: forest 5s, shot 2 5s)"


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: p.memory_nodes.EchoMemoryConfigNode.execute("nope", "idf", "on", "off", 0),
     "unknown cache preset 'nope'"),
    (lambda p: p.scene_nodes.ScenePrompt.execute("a fox", 5.0, "fade", "auto", "", conditioning=[[torch.zeros(
        1, 4, 8), {}]]), "unknown transition 'fade'; choose one of: smooth, hard cut"),
    (lambda p: p.scene_nodes.ScenePrompt.execute("a fox", 5.0, "smooth", "auto", ""), "connect a CLIP"),
    (lambda p: p.scene_nodes.ScenePrompt.execute("x", math.nan, "smooth", "auto", "", conditioning=[[torch.zeros(
        1, 4, 8), {}]]), "shot 1: duration must be a positive number of seconds, got nan"),
])
def test_what_only_the_run_can_see_fails_with_a_message_that_says_what_to_change(pack, call, message):
    with pytest.raises(Exception, match=message):
        call(pack)


_COND = [[torch.zeros(1, 4, 8), {}]]


@pytest.mark.parametrize(("latent", "message"), [
    ({"samples": torch.zeros(1, 4, 60, 104)}, r"shot 1: the start latent is \[1, 4, 60, 104\]; expected a Wan video"),
    ({"samples": torch.zeros(1, 16, 1, 60, 104, dtype=torch.int64)}, "shot 1: the start latent must hold floating"),
    ({"samples": torch.zeros(3, 16, 1, 60, 104)}, "shot 1: the start latent holds 3 videos"),
    ({"samples": torch.full((1, 16, 1, 60, 104), math.inf)}, "shot 1: the start latent holds NaN or infinite"),
    ({"noise_mask": torch.zeros(1)}, "shot 1: the start latent is not a LATENT"),
    ("a string", "shot 1: the start latent is not a LATENT"),
])
def test_a_start_latent_that_cannot_open_a_shot_is_refused_with_what_to_connect(pack, latent, message):
    with pytest.raises(Exception, match=message):
        pack.scene_nodes.ScenePrompt.execute("a fox", 5.0, "smooth", "auto", "", conditioning=_COND,
                                             start_latent=latent)


def test_a_start_latent_opens_its_shot_normalised(pack):
    raw = torch.randn(1, 16, 3, 60, 104)
    shots = pack.scene_nodes.ScenePrompt.execute("a fox", 5.0, "smooth", "auto", "", conditioning=_COND,
                                                 start_latent={"samples": raw}).result[0]
    start = shots.shots[0].start
    assert start.shape == (1, 3, 16, 60, 104) and start.dtype == torch.float32
    assert torch.allclose(pack_latents().to_comfy_latent(start), raw, atol=1e-5)
    assert "start 3 frames" in repr(shots.shots[0])


def test_start_frames_keeps_the_end_of_an_encoded_clip(pack):
    raw = torch.randn(1, 16, 6, 60, 104)
    shots = pack.scene_nodes.ScenePrompt.execute("a fox", 5.0, "smooth", "auto", "", conditioning=_COND,
                                                 start_latent={"samples": raw}, start_frames=3).result[0]
    assert torch.allclose(pack_latents().to_comfy_latent(shots.shots[0].start), raw[:, :, 3:], atol=1e-5)
    with pytest.raises(Exception, match="shot 1: start_frames is 7 but the start latent holds 6 latent frames"):
        pack.scene_nodes.ScenePrompt.execute("a fox", 5.0, "smooth", "auto", "", conditioning=_COND,
                                             start_latent={"samples": raw}, start_frames=7)


def pack_latents():
    return importlib.import_module("echo_forcing.pipeline.latents")


# ---- the stop route's rule (nodes/host.py stop_target) ------------------------------------------------------

RUNNING = [(1, "run-1", {}, {"client_id": "tab-a"}, [])]
QUEUED = [(2, "queued-2", {}, {"client_id": "tab-b"}, []), (3, "api-3", {}, {}, [])]


@pytest.mark.parametrize("body, status", [
    (None, 400), ([], 400), ("run-1", 400), (5, 400), ({}, 400), ({"client_id": "tab-a"}, 400),
    ({"prompt_id": 5}, 400), ({"prompt_id": ""}, 400), ({"prompt_id": "x" * 201}, 400),
    ({"prompt_id": "run-1", "shot": 0, "client_id": "tab-a"}, 400),
    ({"prompt_id": "run-1", "shot": -3, "client_id": "tab-a"}, 400),
    ({"prompt_id": "run-1", "shot": True, "client_id": "tab-a"}, 400),
    ({"prompt_id": "run-1", "shot": 1.0, "client_id": "tab-a"}, 400),
    ({"prompt_id": "run-1", "shot": "2", "client_id": "tab-a"}, 400),
    ({"prompt_id": "run-1", "shot": 10**30, "client_id": "tab-a"}, 400),
    ({"prompt_id": "run-1", "client_id": 7}, 400), ({"prompt_id": "run-1", "client_id": "a" * 201}, 400),
    ({"prompt_id": "run-1", "client_id": "tab-a", "__proto__": 1}, 400),
    ({"prompt_id": "run-1"}, 403), ({"prompt_id": "run-1", "client_id": "tab-b"}, 403),
    ({"prompt_id": "queued-2", "client_id": "tab-a"}, 403),
    ({"prompt_id": "ended-9", "client_id": "tab-a"}, 404), ({"prompt_id": "../../x", "client_id": "tab-a"}, 404),
])
def test_the_stop_rule_refuses_bad_requests_and_other_clients_runs(pack, body, status):
    with pytest.raises(pack.host.StopRefused) as refused:
        pack.host.stop_target(body, RUNNING, QUEUED)
    assert refused.value.status == status and str(refused.value)


@pytest.mark.parametrize("body, target", [
    ({"prompt_id": "run-1", "client_id": "tab-a"}, ("run-1", None)),
    ({"prompt_id": "run-1", "shot": 3, "client_id": "tab-a"}, ("run-1", 3)),
    ({"prompt_id": "queued-2", "shot": 1, "client_id": "tab-b"}, ("queued-2", 1)),
    ({"prompt_id": "api-3", "shot": 2}, ("api-3", 2)),  # queued without a client: its id alone names it
])
def test_the_stop_rule_accepts_the_client_that_queued_the_run(pack, body, target):
    assert pack.host.stop_target(body, RUNNING, QUEUED) == target


def test_a_stop_request_ends_the_run_after_the_shot_asked_for(pack):
    host = pack.host
    stop = host.StopRequest("run-1")
    assert not stop(0)  # nothing asked
    host._stop_requests["run-1"] = 3
    before = host.requested_stops()
    assert [stop(shot) for shot in range(4)] == [False, False, True, True]  # shot indices 0.. ; shot 3 is index 2
    assert host.requested_stops() > before  # the sampler's fingerprint moves: no stale cached result
    host._stop_requests["run-1"] = None
    assert stop(0)  # no shot: after the current one
    stop.close()
    assert "run-1" not in host._stop_requests and not stop(5)


def test_model_cards_travel_from_the_loader_to_the_sampler(pack):
    """Load Causal DiT's model_card: auto recognises the file (a Wan2.1 DiT of a size no card describes gets none),
    a chosen card is checked against the weights; the MODEL carries it and the sampler follows it (a core loader's
    MODEL gets its architecture's default)."""
    from types import SimpleNamespace

    from echo_forcing.models.model_cards import ModelCardError

    loader, sampler = pack.load_causal_dit, pack.sampler
    options = _inputs(loader.LoadCausalDiT)["model_card"].options
    assert options["options"][0] == "auto" and "causal-forcing++-2step" in options["options"]
    tiny = SimpleNamespace(dim=256, num_layers=2, in_dim=16)
    small = SimpleNamespace(dim=1536, num_layers=30, in_dim=16)
    name, how = loader.card_of("tiny_dit.safetensors", "auto", tiny)
    assert name is None and "no model card describes" in how and "3-frame blocks, 4 steps" in how
    assert loader.card_of("tiny_dit.safetensors", "causal-forcing++-2step", small)[0] == "causal-forcing++-2step"
    with pytest.raises(ModelCardError, match=r"is for wan2.1-t2v-1.3b .* but the weights have width 256, 2 layers"):
        loader.card_of("tiny_dit.safetensors", "causal-forcing-framewise", tiny)
    assert loader.card_of("tiny_dit.safetensors", "auto", SimpleNamespace(dim=2048, num_layers=24, in_dim=48))[0] \
        == "longlive2-5b"
    with pytest.raises(ModelCardError, match="36 latent channels, which no model card describes"):
        loader.card_of("tiny_dit.safetensors", "auto", SimpleNamespace(dim=2048, num_layers=24, in_dim=36))

    carried = SimpleNamespace(model_options={loader.CARD_OPTION: ("causal-forcing++-2step", "chosen")})
    card, how = sampler.model_card(carried, small)
    assert (card.frames_per_block, card.steps, how) == (1, (1000, 500), "chosen")
    assert sampler.model_card(SimpleNamespace(model_options={loader.CARD_OPTION: (None, "none")}), tiny) == (
        None, "none")
    card, how = sampler.model_card(SimpleNamespace(model_options={}), small)  # core Load Diffusion Model
    assert card.name == "self-forcing" and "from a loader without model cards" in how
    with pytest.raises(ModelCardError, match="is for 16-channel latents but the model reads 48"):
        sampler.model_card(carried, SimpleNamespace(dim=1536, num_layers=30, in_dim=48))
    steps = _inputs(sampler.AutoregressiveSampler)["steps"].options
    assert (steps["default"], steps["min"]) == (0, 0) and "0: the model card's" in steps["tooltip"]


def test_save_story_says_why_a_run_kept_no_story(pack):
    from echo_forcing.pipeline.story import StoryError

    with pytest.raises(StoryError, match="kept no story for this run: a rolling-forcing run cannot be continued"):
        pack.story_nodes.SaveStory.execute(None, "tale")


def test_the_sampler_vae_input_takes_only_a_wan21_vae_and_only_builds_it_for_krea(pack):
    from types import SimpleNamespace

    from echo_forcing.models.wan_vae import random_wan_vae_state_dict
    from echo_forcing.pipeline import RolloutInputError

    vae_of = pack.sampler.pixel_vae
    assert vae_of(None, torch.float32) is None
    with pytest.raises(RolloutInputError, match="the vae input is not a ComfyUI VAE \\(str\\)"):
        vae_of("wan_2.1_vae.safetensors", torch.float32)

    class Stage(torch.nn.Module):
        def __init__(self, tensors):
            super().__init__()
            self.tensors = tensors

        def state_dict(self, *args, **kwargs):
            return dict(self.tensors)

    whole = random_wan_vae_state_dict(3, dim=8)
    build = vae_of(SimpleNamespace(first_stage_model=Stage(whole)), torch.float32)
    assert build().decoder.z_dim == 16  # built only when called (the run plan calls it for krea alone)
    wide = dict(whole, **{"conv2.weight": torch.zeros(48, 48, 1, 1, 1), "conv2.bias": torch.zeros(48)})
    with pytest.raises(RolloutInputError, match=r"48 latent channels \(the Wan2.2 TI2V-5B VAE\)"):
        vae_of(SimpleNamespace(first_stage_model=Stage(wide)), torch.float32)()
