"""The batch queue's pure logic: prompt lines, workflow filling, resume rules, ComfyUI error texts."""

from __future__ import annotations

import json

import pytest

from echo_forcing.batch.jobs import (
    DONE,
    FAILED,
    MANIFEST_NAME,
    PENDING,
    BatchUsageError,
    Manifest,
    PromptLine,
    UnsafeOutput,
    file_stem,
    fill_workflow,
    format_execution_error,
    format_interrupted,
    format_node_errors,
    format_validation_error,
    history_error,
    job_name,
    load_workflow,
    output_files,
    parse_prompt_lines,
    parse_workflow,
    plan_batch,
    read_prompt_file,
    summarize,
)
from echo_forcing.pipeline.scene_script import SceneScriptError, parse_scene_script

STORY = ("A keeper climbs a lighthouse [10s#] | A night market [10s@] | Back in the lighthouse, the keeper lights "
         "the lamp [10s]; Climb | Market | Lamp")
SMOOTH = "A fox runs through snow [5s] | The fox stops at a frozen lake [5s]"

# A minimal API-format workflow as ComfyUI accepts it, with the pack's scene-script node added.
GRAPH = {
    "1": {"class_type": "SFProbe_MemoryInit", "inputs": {"seed": 7, "width": 64, "height": 64,
                                                          "frames_per_block": 3}, "_meta": {"title": "SF Memory Init"}},
    "2": {"class_type": "SFProbe_BlockGenerate", "inputs": {"memory": ["1", 0], "scenes": ["10", 0],
                                                             "num_blocks": 4}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "sfprobe/frame"}},
    "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": "sfprobe/video/",
                                                "format": "auto", "codec": "auto"}},
    "9": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": ""}},
    "11": {"class_type": "SomeSaver", "inputs": {"filename_prefix": ["12", 0]}},
    "10": {"class_type": "EchoForcingSceneScript", "inputs": {"script": "placeholder [5s]"},
           "_meta": {"title": "Story"}},
}


def workflow(graph=None):
    return parse_workflow(json.loads(json.dumps(graph or GRAPH)), "story_api.json")


# ------------------------------------------------------------------------------------------------ prompt lines


def test_lines_skip_blanks_and_comments_and_keep_file_line_numbers():
    text = f"# header\n\n  {STORY}  \n   # indented comment\n\t\nnot a scene script\n{SMOOTH}\n"
    lines = parse_prompt_lines(text)
    assert [(line.number, line.text) for line in lines] == [(3, STORY), (6, "not a scene script"), (7, SMOOTH)]
    assert lines[0].error is None and lines[2].error is None
    with pytest.raises(SceneScriptError) as parser:
        parse_scene_script("not a scene script")
    assert lines[1].error == f"invalid scene script: {parser.value}"
    assert lines[0].text_hash != lines[2].text_hash and len(lines[0].text_hash) == 64


def test_each_bad_line_gets_its_own_parser_message():
    lines = parse_prompt_lines("a cat [10s!]\na cat [0s]\na dog [5s] | | a bird [5s]\n")
    assert [line.error for line in lines] == [
        f"invalid scene script: {err}" for err in _parser_errors(["a cat [10s!]", "a cat [0s]",
                                                                  "a dog [5s] | | a bird [5s]"])]
    assert "'[10s!]'" in lines[0].error and "zero duration" in lines[1].error and "empty scene" in lines[2].error


def _parser_errors(texts):
    errors = []
    for text in texts:
        with pytest.raises(SceneScriptError) as err:
            parse_scene_script(text)
        errors.append(str(err.value))
    return errors


def test_read_prompt_file_errors_and_bom(tmp_path):
    with pytest.raises(BatchUsageError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(BatchUsageError, match="no prompt lines"):
        read_prompt_file(empty)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(("\ufeff" + SMOOTH + "\r\n" + STORY + "\r\n").encode("utf-8"))
    assert [(line.number, line.text, line.error) for line in read_prompt_file(bom)] == [(1, SMOOTH, None),
                                                                                         (2, STORY, None)]


def test_stem_and_job_names():
    assert file_stem("prompts/prompts_hard.txt") == "prompts_hard"
    assert file_stem("my story (v2).txt") == "my_story__v2_"
    assert file_stem("..txt") == "prompts"
    assert job_name("prompts_hard", 7) == "prompts_hard-0007"
    assert job_name("p", 12345) == "p-12345"


# ---------------------------------------------------------------------------------------------------- workflow


def test_workflow_errors_name_the_file(tmp_path):
    with pytest.raises(BatchUsageError, match=r"story_api.json is a UI-format workflow .*Export \(API\)"):
        parse_workflow({"nodes": [], "links": [], "version": 0.4}, "story_api.json")
    without = {k: v for k, v in GRAPH.items() if k != "10"}
    with pytest.raises(BatchUsageError, match=r"^story_api.json has no EchoForcingSceneScript node; .*\"script\""):
        parse_workflow(without, "story_api.json")
    two = {**GRAPH, "20": {"class_type": "EchoForcingSceneScript", "inputs": {"script": ""}}}
    with pytest.raises(BatchUsageError, match=r"^story_api.json has 2 EchoForcingSceneScript nodes \(10, 20\)"):
        parse_workflow(two, "story_api.json")
    with pytest.raises(BatchUsageError, match=r"entry 'prompt' is not an API-format node"):
        parse_workflow({"prompt": GRAPH, "client_id": "x"}, "body.json")
    with pytest.raises(BatchUsageError, match="not an API-format workflow"):
        parse_workflow([], "list.json")
    bad = tmp_path / "bad_api.json"
    bad.write_text("{\"1\": ", encoding="utf-8")
    with pytest.raises(BatchUsageError, match=r"bad_api.json is not valid JSON: .* line 1"):
        load_workflow(bad)
    with pytest.raises(BatchUsageError, match="does not exist"):
        load_workflow(tmp_path / "none_api.json")
    good = tmp_path / "good_api.json"
    good.write_text(json.dumps(GRAPH), encoding="utf-8")
    loaded = load_workflow(good)
    assert loaded.script_node == "10" and loaded.graph == GRAPH and loaded.source == str(good)


def test_workflow_hash_ignores_titles_and_the_script_only():
    base = workflow()
    retitled = json.loads(json.dumps(GRAPH))
    retitled["1"]["_meta"]["title"] = "Renamed"
    retitled["10"]["inputs"]["script"] = "another placeholder [3s]"
    assert workflow(retitled).hash == base.hash
    reseeded = json.loads(json.dumps(GRAPH))
    reseeded["1"]["inputs"]["seed"] = 8
    assert workflow(reseeded).hash != base.hash


def test_fill_workflow_sets_the_script_and_per_line_prefixes():
    flow = workflow()
    line = PromptLine(12, STORY)
    graph = fill_workflow(flow, line, "prompts_recall")
    assert graph["10"]["inputs"]["script"] == STORY
    assert graph["3"]["inputs"]["filename_prefix"] == "sfprobe/frame/prompts_recall-0012"
    assert graph["6"]["inputs"]["filename_prefix"] == "sfprobe/video/prompts_recall-0012"
    assert graph["9"]["inputs"]["filename_prefix"] == "prompts_recall-0012"
    assert graph["11"]["inputs"]["filename_prefix"] == ["12", 0]  # a link stays a link
    assert graph["2"]["inputs"] == GRAPH["2"]["inputs"]
    assert flow.graph == GRAPH  # the template is not touched
    other = fill_workflow(flow, PromptLine(13, SMOOTH), "prompts_recall")
    assert other["3"]["inputs"]["filename_prefix"] == "sfprobe/frame/prompts_recall-0013"
    assert graph["10"]["inputs"]["script"] == STORY


# --------------------------------------------------------------------------------------------- ComfyUI errors

# ComfyUI's refusal bodies for POST /prompt, in their real shapes.
EXECUTION_ERROR = {"prompt_id": "p1", "node_id": "2", "node_type": "SFProbe_BlockGenerate", "executed": [],
                   "exception_message": "sfprobe: simulated failure at block 1\n", "exception_type": "RuntimeError",
                   "traceback": ["  File \".../execution.py\", line 496, in execute\n …"],
                   "current_inputs": {"memory": ["MemoryState(seed=7, …)"], "num_blocks": [5]},
                   "current_outputs": ["1"], "timestamp": 1}
MISSING_INPUT = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                           "details": "", "extra_info": {}},
                 "node_errors": {"2": {"errors": [{"type": "required_input_missing",
                                                   "message": "Required input is missing", "details": "memory",
                                                   "extra_info": {"input_name": "memory"}}],
                                       "dependent_outputs": ["3", "4", "8", "9", "6", "7"],
                                       "class_type": "SFProbe_BlockGenerate"}}}


def test_execution_error_text():
    assert format_execution_error(EXECUTION_ERROR) == \
        "node 2 (SFProbe_BlockGenerate): RuntimeError: sfprobe: simulated failure at block 1"
    titled = {"2": {"class_type": "SFProbe_BlockGenerate", "inputs": {}, "_meta": {"title": "Sampler"}}}
    assert format_execution_error(EXECUTION_ERROR, titled) == \
        "node 2 'Sampler' (SFProbe_BlockGenerate): RuntimeError: sfprobe: simulated failure at block 1"
    assert format_execution_error({"node_id": "4", "exception_type": "OOM"}, GRAPH) == "node 4: OOM"


def test_validation_error_texts():
    assert format_validation_error(MISSING_INPUT) == \
        "Prompt outputs failed validation: node 2 (SFProbe_BlockGenerate): Required input is missing: memory"
    several = json.loads(json.dumps(MISSING_INPUT))
    several["node_errors"]["2"]["errors"].append(
        {"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
         "details": "memory, received_type(STRING) mismatch input_type(SF_MEMORY_STATE)",
         "extra_info": {"input_name": "memory", "received_type": "STRING", "linked_node": ["7", 0]}})
    several["node_errors"]["4"] = {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                               "details": "method: 'bogus' not in ['default', 'fastest', 'slowest']",
                                               "extra_info": {}}],
                                   "dependent_outputs": ["4"], "class_type": "SaveAnimatedWEBP"}
    assert format_validation_error(several, GRAPH) == (
        "Prompt outputs failed validation: node 2 (SFProbe_BlockGenerate): Required input is missing: memory; "
        "node 2 (SFProbe_BlockGenerate): Return type mismatch between linked nodes: memory, "
        "received_type(STRING) mismatch input_type(SF_MEMORY_STATE); "
        "node 4 (SaveAnimatedWEBP): Value not in list: method: 'bogus' not in ['default', 'fastest', 'slowest']")
    unknown = {"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.",
                         "details": "Node ID '#10'"}, "node_errors": {}}
    assert format_validation_error(unknown) == \
        "Cannot execute because node NoSuchNode does not exist. (Node ID '#10')"
    no_outputs = {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                            "extra_info": {}}, "node_errors": {}}
    assert format_validation_error(no_outputs) == "Prompt has no outputs"
    assert format_validation_error("Bad Request") == "ComfyUI refused the prompt: 'Bad Request'"
    assert format_node_errors(MISSING_INPUT["node_errors"]) == ("some outputs failed validation and will not run: "
                                                                "node 2 (SFProbe_BlockGenerate): Required input is "
                                                                "missing: memory")


def test_interrupted_and_history_errors():
    interrupted = {"prompt_id": "p1", "node_id": "2", "node_type": "SFProbe_BlockGenerate", "executed": ["1"],
                   "timestamp": 1}
    assert format_interrupted(interrupted) == "interrupted at node 2 (SFProbe_BlockGenerate)"
    assert format_interrupted({"prompt_id": "p1"}) == "interrupted"
    ok = {"outputs": {}, "status": {"status_str": "success", "completed": True,
                                    "messages": [["execution_start", {"prompt_id": "p1"}],
                                                 ["execution_success", {"prompt_id": "p1"}]]}}
    assert history_error(ok) is None
    failed = {"outputs": {}, "status": {"status_str": "error", "completed": False,
                                        "messages": [["execution_start", {"prompt_id": "p1"}],
                                                     ["execution_error", EXECUTION_ERROR]]}}
    assert history_error(failed) == format_execution_error(EXECUTION_ERROR)
    stopped = {"status": {"status_str": "error", "messages": [["execution_interrupted", interrupted]]}}
    assert history_error(stopped) == "interrupted at node 2 (SFProbe_BlockGenerate)"
    assert history_error({"status": {"status_str": "error", "messages": []}}).startswith("ComfyUI reported an error")


# ----------------------------------------------------------------------------------------------------- outputs


def test_output_files_take_every_file_list_with_unique_local_names():
    outputs = {  # "executed" payloads, as /history stores them
        "9": {"latents": [{"filename": "latent_00001_.latent", "subfolder": "sfprobe", "type": "output"}]},
        "3": {"images": [{"filename": "frame_00001_.png", "subfolder": "sfprobe", "type": "output"},
                         {"filename": "frame_00002_.png", "subfolder": "sfprobe", "type": "output"}]},
        "10": {"images": [{"filename": "frame_00001_.png", "subfolder": "other", "type": "temp"}],
               "animated": [True], "text": ["not a file"]},
        "12": {"gifs": [{"filename": "job.json", "subfolder": "", "type": "output"},
                        {"filename": "JOB.JSON", "subfolder": "x"}, {"filename": ".hidden.mp4"},
                        {"filename": "a.partial"}, {"filename": "b.job.json"}]},
        "1:7": {"images": [{"filename": "frame_00002_.PNG", "subfolder": "sub", "type": "output"}]},
        "6": {"images": [{"filename": "video_00001_.mp4", "subfolder": "sfprobe", "type": "output"}],
              "videos": [{"filename": "video_00001_.mp4", "subfolder": "sfprobe", "type": "output"}]},
        "2": {"text": ["start_blocks=0 end=4 runs=2"]},
    }
    files = output_files(outputs)
    assert [(f.node_id, f.key, f.filename, f.subfolder, f.type, f.local_name) for f in files] == [
        ("3", "images", "frame_00001_.png", "sfprobe", "output", "frame_00001_.png"),
        ("3", "images", "frame_00002_.png", "sfprobe", "output", "frame_00002_.png"),
        ("6", "images", "video_00001_.mp4", "sfprobe", "output", "video_00001_.mp4"),
        ("9", "latents", "latent_00001_.latent", "sfprobe", "output", "latent_00001_.latent"),
        ("10", "images", "frame_00001_.png", "other", "temp", "10-frame_00001_.png"),
        ("12", "gifs", "job.json", "", "output", "12-job.json"),
        ("12", "gifs", "JOB.JSON", "x", "output", "12-2-JOB.JSON"),  # names equal but for case are distinct
        ("12", "gifs", ".hidden.mp4", "", "output", "_.hidden.mp4"),  # never a name of the client's own temps
        ("12", "gifs", "a.partial", "", "output", "a.partial"),
        ("12", "gifs", "b.job.json", "", "output", "b.job.json"),
        ("1:7", "images", "frame_00002_.PNG", "sub", "output", "1_7-frame_00002_.PNG"),
    ]
    assert files[4].view_params() == {"filename": "frame_00001_.png", "subfolder": "other", "type": "temp"}
    assert output_files({}) == [] and output_files(None) == []


@pytest.mark.parametrize(("item", "message"), [
    ({"filename": "../../evil.mp4"}, r"'\.\./\.\./evil\.mp4', which contains a path separator"),
    ({"filename": "a\\b.png"}, "which contains a path separator"),
    ({"filename": "/etc/passwd"}, "which contains a path separator"),
    ({"filename": ".."}, "which is '..'"),
    ({"filename": "clip\x00.mp4"}, r"'clip\\x00\.mp4', which contains a NUL character"),
    ({"filename": "clip\n.mp4"}, "which contains the control character"),
    ({"filename": "C:evil.mp4"}, "which starts with a drive letter"),
    ({"filename": "x" * 252 + ".mp4"}, "which is 256 bytes long"),
    ({"filename": "\udc80.mp4"}, "which is not valid Unicode"),
    ({"filename": "ok.mp4", "subfolder": "../../etc"}, "the subfolder '../../etc', which contains '..'"),
    ({"filename": "ok.mp4", "subfolder": "/abs"}, "which is an absolute path"),
    ({"filename": "ok.mp4", "subfolder": {"a": 1}}, "which is not a string"),
    ({"filename": "ok.mp4", "type": "out\x00put"}, "the type 'out\\\\x00put', which contains a control"),
])
def test_unsafe_output_names_fail_the_whole_output_list(item, message):
    outputs = {"3": {"images": [{"filename": "fine.png"}]}, "4": {"images": [item]}}
    with pytest.raises(UnsafeOutput, match=message) as err:
        output_files(outputs)
    assert "(node 4, images)" in str(err.value) and str(err.value).endswith("the line's outputs are not downloaded")
    assert output_files({"3": {"images": [{"filename": "x" * 251 + ".mp4"}]}})[0].local_name == "x" * 251 + ".mp4"


# ---------------------------------------------------------------------------------------------------- manifest


def _done(manifest, name, line, flow, files):
    for rel in files:
        path = manifest.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    manifest.update(name, line, flow.hash, PENDING, prompt_id="p", server="http://a", files=[])
    return manifest.update(name, line, flow.hash, DONE, files=files, error=None)


def test_resume_rules(tmp_path):
    flow = workflow()
    manifest = Manifest.load(tmp_path)
    line = PromptLine(3, STORY)
    name = job_name("story", 3)
    assert manifest.rerun_reason(name, line, flow.hash) == "new"
    record = _done(manifest, name, line, flow, [f"{name}/a.mp4", f"{name}/job.json"])
    assert record["started"] <= record["finished"] and record["status"] == DONE
    reloaded = Manifest.load(tmp_path)
    assert reloaded.jobs == manifest.jobs
    assert reloaded.rerun_reason(name, line, flow.hash) is None
    assert reloaded.rerun_reason(name, PromptLine(3, STORY + " "), flow.hash) == "line changed"
    assert reloaded.rerun_reason(name, PromptLine(4, STORY), flow.hash) is None  # same text, same job name
    reseeded = json.loads(json.dumps(GRAPH))
    reseeded["1"]["inputs"]["seed"] = 9
    assert reloaded.rerun_reason(name, line, workflow(reseeded).hash) == "workflow changed"
    (tmp_path / name / "a.mp4").unlink()
    assert reloaded.rerun_reason(name, line, flow.hash) == f"output {name}/a.mp4 is missing"
    reloaded.update(name, line, flow.hash, FAILED, error="boom")
    assert Manifest.load(tmp_path).rerun_reason(name, line, flow.hash) == "failed before"
    reloaded.update(name, line, flow.hash, PENDING, prompt_id="q", server="http://a")
    assert Manifest.load(tmp_path).rerun_reason(name, line, flow.hash) == "unfinished before"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, name]  # no temporary file left


def test_damaged_manifest_is_a_usage_error(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{\"version\": 1, \"jobs\": ", encoding="utf-8")
    with pytest.raises(BatchUsageError, match="delete it to start over"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"version": 99, "jobs": {}}), encoding="utf-8")
    with pytest.raises(BatchUsageError, match="version 99"):
        Manifest.load(tmp_path)


def test_plan_and_summary(tmp_path):
    flow = workflow()
    lines = parse_prompt_lines(f"{STORY}\n# skip\nbroken line\n{SMOOTH}\n")
    manifest = Manifest.load(tmp_path)
    _done(manifest, "story-0001", lines[0], flow, ["story-0001/v.mp4"])
    plan = plan_batch(lines, flow, "story", manifest)
    assert [line.number for line in plan.skipped] == [1]
    assert [line.number for line in plan.invalid] == [3]
    assert [(job.name, job.reason) for job in plan.jobs] == [("story-0004", "new")]
    assert plan.jobs[0].graph["10"]["inputs"]["script"] == SMOOTH
    assert plan.jobs[0].graph["3"]["inputs"]["filename_prefix"] == "sfprobe/frame/story-0004"
    saved = Manifest.load(tmp_path).jobs["story-0003"]
    assert saved["status"] == FAILED and saved["error"].startswith("invalid scene script: scene 1: missing duration")
    results = summarize(plan, manifest)
    assert [(r.number, r.name, r.status) for r in results] == [(1, "story-0001", "skipped"),
                                                               (3, "story-0003", FAILED), (4, "story-0004", FAILED)]
    assert results[0].detail == "done earlier, 1 file" and results[2].detail == "not finished"
    manifest.update("story-0004", lines[2], flow.hash, DONE, files=["story-0004/a", "story-0004/b"],
                    server="http://b")
    assert summarize(plan, manifest)[2].detail == "2 files on http://b"
