"""Run one rollout in a fresh process and print the planner's prediction next to the peak it reached.

    python tests/memory_peak_worker.py CONFIG_JSON PRESET KV_STORAGE DTYPE HEIGHT WIDTH SCRIPT

Measured: the growth of the resident set from just before the rollout to its high-water mark (Linux: the
mark is reset through /proc/self/clear_refs). Run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors
leave the resident set at once. Predicted: ``pipeline.memory_need`` for the same run, device and host parts
together (on the CPU both are RAM; the weights are loaded before the measurement and not counted).
Used by tests/test_memory_plan.py; prints one JSON line.
"""

from __future__ import annotations

import json
import re
import sys

import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import make_policy
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import RolloutSettings, parse_scene_script, rollout, scenes_for_script
from echo_forcing.pipeline.memory_need import memory_need
from echo_forcing.pipeline.rollout import token_grid


def resident(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) * 1024


def main(config: str, preset: str, kv: str, dtype_name: str, height: str, width: str, script: str) -> dict:
    cfg = WanConfig(**json.loads(config))
    dtype = getattr(torch, dtype_name)
    torch.set_num_threads(2)
    model = CausalWan(WanDiT.from_state_dict(random_wan_state_dict(cfg, seed=0)).to(dtype), dtype=dtype,
                      device="cpu")
    scenes = parse_scene_script(script)
    embeddings = stand_in_text_embedding([s.prompt for s in scenes], cfg.text_dim)
    texts = [model.encode_text(embeddings[i:i + 1]) for i in range(len(scenes))]
    plan, frames = scenes_for_script(scenes, texts)
    settings = RolloutSettings(num_frames=frames, height=int(height), width=int(width), seed=1, noise="per-shot")
    policy = make_policy(preset, **({"kv_storage": kv} if preset.startswith("echo") else {}))
    need = memory_need(cfg, dtype, policy, token_grid(cfg.patch_size, settings), frames=frames, frames_per_block=3,
                       latent_size=settings.latent_size, noise=settings.noise, shots=len(scenes))
    before = resident("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rollout(model, plan, settings, policy, on_boundary=lambda boundary: None)  # shot boundaries made, as in ComfyUI
    measured = resident("VmHWM") - before
    return {"measured": measured, "predicted": need.device_bytes + need.host_bytes, "device": need.device,
            "host": need.host}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:8])))
