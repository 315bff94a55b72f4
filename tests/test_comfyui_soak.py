"""Real host soak: 20 prompts queued at once on one ComfyUI server, good and hostile mixed (a pool file with a
damaged header, a bad scene script, sizes that cannot fit, a NaN LoRA, an unknown preset, a missing model).
Every bad one fails with a ComfyUI-shaped error (an HTTP 400 with node_errors at submit, or an
execution_error naming the node), every good one succeeds, the server answers throughout, and its memory
does not grow (RSS within 5 % of its level after a warm-up run). Runs only with COMFYUI_DIR (conftest)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.comfyui

SCRIPT = "a red fox trots through snow [0.75s] | the fox looks up at falling snow [0.75s#] | a quiet lake [0.75s]"


def graph(models: dict[str, str], seed: int, *, script: str = SCRIPT, width: int = 32, height: int = 32,
          pool: str = "new (empty)", lora: str = "none", preset: str = "echo-forcing", ckpt: str | None = None) -> dict:
    """Load Causal DiT -> Scene Script -> Sampler (with a memory config and a pool) -> core SaveLatent."""
    return {
        "1": {"class_type": "EchoForcingLoadCausalDiT",
              "inputs": {"ckpt_name": ckpt or models["dit"], "weights": "auto", "lora_name": lora,
                         "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": models["clip"], "type": "sd3"}},
        "3": {"class_type": "EchoForcingSceneScript", "inputs": {"clip": ["2", 0], "script": script}},
        "4": {"class_type": "EchoForcingSceneRecallPool", "inputs": {"pool": pool}},
        "5": {"class_type": "EchoForcingMemoryConfig",
              "inputs": {"preset": preset, "recall_matching": "idf", "phase_compression": "preset default",
                         "memory_decay": "preset default", "scene_pool_size": 0}},
        "6": {"class_type": "EchoForcingSampler",
              "inputs": {"model": ["1", 0], "scenes": ["3", 0], "config": ["5", 0], "pool": ["4", 0], "seed": seed,
                         "width": width, "height": height, "fps": 16.0, "steps": 2, "shift": 5.0,
                         "reuse_shots": False}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"soak/{seed}"}},
    }


def _request(url: str, path: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _hostile_files(server, models) -> dict[str, str]:
    """A pool whose header has a non-string label, and a LoRA holding NaN, where the nodes look for them."""
    pools = server.output_dir / "echo_forcing" / "scene_pools"
    pools.mkdir(parents=True, exist_ok=True)
    sig = {"layers": 2, "heads": 2, "head_dim": 128, "dtype": "float32", "grid": [2, 2]}
    save_file({"0.recall.k": torch.zeros(2, 4, 2, 128), "0.recall.v": torch.zeros(2, 4, 2, 128)},
              str(pools / "soak_bad_label.safetensors"),
              metadata={"format": "echo-forcing-scene-pool", "version": "1", "max_size": "64",
                        "signature": json.dumps(sig),
                        "entries": json.dumps([{"label": ["not", "text"], "prompt": "p", "scene": 0,
                                                "recall": True, "select": False}])})
    lora = torch.load(server.models_dir / "loras" / models["lora"], weights_only=True)["generator_lora"]
    first = next(k for k in lora if "lora_A" in k)
    lora[first] = lora[first].clone()
    lora[first].view(-1)[0] = float("nan")
    save_file({k: v.contiguous() for k, v in lora.items()}, str(server.models_dir / "loras" / "soak_nan.safetensors"))
    return {"pool": "soak_bad_label", "lora": "soak_nan.safetensors"}


def test_twenty_mixed_prompts_good_ones_succeed_bad_ones_fail_cleanly(comfy_server, tiny_models):
    url, models = comfy_server.url, tiny_models
    bad_files = _hostile_files(comfy_server, models)
    status, first = _request(url, "/prompt", {"prompt": graph(models, 1000), "client_id": uuid.uuid4().hex})
    assert status == 200, first
    _wait(url, [first["prompt_id"]])  # warm-up: models loaded, caches filled
    baseline = _rss(comfy_server.process.pid)

    queued = _submit_all(url, _interleaved_jobs(models, bad_files))
    results = _wait(url, list(queued))
    for prompt_id, (name, expected) in queued.items():
        _assert_outcome(name, expected, results[prompt_id])
    status, _ = _request(url, "/system_stats")
    assert status == 200
    after = _rss(comfy_server.process.pid)
    growth = after / baseline - 1
    print(f"soak: server RSS {baseline / 2**20:.0f} MiB after the warm-up, {after / 2**20:.0f} MiB after 20 prompts "
          f"({growth:+.1%})")
    assert growth < 0.05, f"server RSS grew {growth:.1%} over 20 prompts"


def _interleaved_jobs(models: dict[str, str], bad_files: dict[str, str]) -> list[tuple[str, dict, str]]:
    """Ten good and ten bad prompts, alternating: (name, prompt, expected: "ok" | "rejected" | "error")."""
    ten_hours = " | ".join(f"shot {i} [3600s]" for i in range(10))
    jobs = []
    for i in range(10):
        jobs.append((f"good {i}", graph(models, 2000 + i), "ok"))
    jobs += [
        ("bad pool header", graph(models, 3000, pool=bad_files["pool"]), "error"),
        ("NaN LoRA", graph(models, 3001, lora=bad_files["lora"]), "error"),
        ("bad script", graph(models, 3002, script="no duration here | [s-curve]"), "rejected"),
        ("ten-hour script", graph(models, 3003, script=ten_hours), "rejected"),
        ("16384 pixels", graph(models, 3004, width=16384, height=16384), "rejected"),
        ("width 500", graph(models, 3005, width=500), "rejected"),
        ("4096x4096 for an hour", graph(models, 3006, width=4096, height=4096,
                                        script=" | ".join(f"shot {i} [600s#]" for i in range(6))), "error"),
        ("unknown preset", graph(models, 3007, preset="nope"), "rejected"),
        ("missing model", graph(models, 3008, ckpt="not_there.safetensors"), "rejected"),
        ("pool name leaving its folder", graph(models, 3009, pool="../../etc/passwd"), "rejected"),
    ]
    return [jobs[i // 2] if i % 2 == 0 else jobs[10 + i // 2] for i in range(20)]  # good and bad interleaved


def _submit_all(url: str, jobs: list[tuple[str, dict, str]]) -> dict[str, tuple[str, str]]:
    """Submit every prompt; those expected to be rejected must get a ComfyUI-shaped HTTP 400. The others, by
    prompt id: (name, expected)."""
    queued = {}
    for name, prompt, expected in jobs:
        status, body = _request(url, "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if expected == "rejected":
            assert status == 400, (name, status, body)
            errors = [e for n in body["node_errors"].values() for e in n["errors"]]
            assert errors and all({"type", "message", "details"} <= set(e) for e in errors), (name, body)
            print(f"soak: {name}: HTTP 400 {errors[0]['type']}: {errors[0]['details'][:160]}")
        else:
            assert status == 200, (name, status, body)
            queued[body["prompt_id"]] = (name, expected)
    return queued


def _assert_outcome(name: str, expected: str, outcome: dict) -> None:
    """A good prompt succeeded; a bad one failed with an execution_error naming a node and a message."""
    state = outcome["status"]["status_str"]
    if expected == "ok":
        assert state == "success", (name, outcome["status"])
    else:
        assert state == "error", (name, outcome["status"])
        error = next(m[1] for m in outcome["status"]["messages"] if m[0] == "execution_error")
        assert error["node_id"] in ("1", "4", "6") and error["exception_message"].strip(), (name, error)
        assert error["exception_type"] != "AttributeError", (name, error)
        print(f"soak: {name}: {error['exception_type']}: {error['exception_message'].strip()[:160]}")


def _wait(url: str, prompt_ids: list[str], timeout: float = 900) -> dict:
    """Poll each prompt's history entry (and /system_stats, so the server must answer throughout)."""
    done, deadline = {}, time.monotonic() + timeout
    while len(done) < len(prompt_ids):
        assert time.monotonic() < deadline, f"{len(prompt_ids) - len(done)} prompts did not finish"
        status, _ = _request(url, "/system_stats")
        assert status == 200, "the server stopped answering"
        for prompt_id in prompt_ids:
            if prompt_id not in done:
                _, entry = _request(url, f"/history/{prompt_id}")
                if prompt_id in entry and entry[prompt_id].get("status", {}).get("completed") is not None:
                    if entry[prompt_id]["status"].get("status_str") in ("success", "error"):
                        done[prompt_id] = entry[prompt_id]
        time.sleep(0.5)
    return done
