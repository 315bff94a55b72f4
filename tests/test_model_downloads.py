"""``python -m echo_forcing models``: the registry, and downloads against a local HTTP server standing in for the
Hugging Face hub (reached through the hub client's endpoint setting; a guard refuses any other host, so nothing
here touches the internet).

The stand-in answers what ``huggingface_hub`` asks of ``/{repo}/resolve/{revision}/{path}``: HEAD with
``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag`` (the LFS SHA-256), ``X-Linked-Size`` and ``Content-Length``; GET
with ``Range`` support; ``X-Error-Code`` on a 404. It can cut the connection in the middle of a body.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from echo_forcing import __main__ as cli
from echo_forcing.cli import model_downloads as dl
from echo_forcing.cli import workflows
from echo_forcing.cli.tiny_files import tiny_lora_state_dict
from echo_forcing.models import random_wan_state_dict, registry
from echo_forcing.models.checkpoints import CheckpointError, load_wan_checkpoint, read_tensors
from echo_forcing.models.registry import KnownModel

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


# ---- the stand-in hub ------------------------------------------------------------------------------------------


@dataclass
class HubFile:
    data: bytes
    etag: str | None = None
    """The LFS SHA-256 the hub reports (default: the data's own)."""


@dataclass
class Hub:
    """Files by (repo, path) at :data:`COMMIT`; every request is logged as (method, path, lower-case headers)."""

    url: str = ""
    files: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    cut_first_get: bool = False
    cut_every_get: bool = False
    gets: int = 0

    def add(self, repo: str, path: str, data: bytes, etag: str | None = None) -> None:
        self.files[(repo, path)] = HubFile(data, etag)

    def requests(self, method: str) -> list:
        return [entry for entry in self.log if entry[0] == method]


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the test reads hub.log instead
            pass

        def _lookup(self):
            hub.log.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            m = _RESOLVE.match(self.path)
            if not m:
                return self._error(404, "RepoNotFound")
            if m["rev"] not in (COMMIT, "main"):
                return self._error(404, "RevisionNotFound")
            found = hub.files.get((m["repo"], m["path"]))
            if found is None:
                return self._error(404, "EntryNotFound")
            return found

        def _error(self, status: int, code: str):
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None

        def _meta(self, f: HubFile, status: int = 200) -> None:
            self.send_response(status)
            etag = f.etag or hashlib.sha256(f.data).hexdigest()
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(f.data)))
            self.send_header("Accept-Ranges", "bytes")

        def do_HEAD(self):
            f = self._lookup()
            if f is not None:
                self._meta(f)
                self.send_header("Content-Length", str(len(f.data)))
                self.end_headers()

        def do_GET(self):
            f = self._lookup()
            if f is None:
                return
            hub.gets += 1
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged[1])
            body = f.data[start:]
            self._meta(f, 206 if ranged else 200)
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if hub.cut_every_get or (hub.cut_first_get and hub.gets == 1):
                self.wfile.write(body[: max(len(body) // 2, 1)])  # then the connection drops mid-body
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """A hub on 127.0.0.1, set as HF_ENDPOINT; name resolution of any other host fails (no internet)."""
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1"):
            raise socket.gaierror(f"test guard: no network to {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    for name, value in {"HF_ENDPOINT": state.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "",
                        "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        assert all(_RESOLVE.match(path) for _, path, _ in state.log), state.log


@pytest.fixture()
def models_dir(tmp_path) -> Path:
    """A ComfyUI models folder with its (empty) model folders."""
    folder = tmp_path / "ComfyUI" / "models"
    for name in registry.FOLDERS:
        (folder / name).mkdir(parents=True)
    return folder


@pytest.fixture()
def small_chunks(monkeypatch):
    """huggingface_hub writes what it receives in 10 MiB pieces and waits a second before it retries a cut
    transfer: with 64 KiB pieces and no wait, the tests' files behave like big ones, quickly."""
    from huggingface_hub import constants, file_download

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    monkeypatch.setattr(file_download.time, "sleep", lambda seconds: None)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(name: str, path: str, data: bytes, *, repo: str = "test-org/tiny", folder: str = "vae",
           kind: str = "vae", file: str | None = None, **changes) -> KnownModel:
    model = KnownModel(name, "test", kind, repo, path, COMMIT, _sha(data), len(data), "test-licence", folder,
                       file or path.rsplit("/", 1)[-1], "a tiny test file")
    return replace(model, **changes) if changes else model


def _safetensors_bytes(seed: int = 0, n: int = 40_000) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    return save({"weight": torch.randn(n, generator=gen), "bias": torch.randn(16, generator=gen)}, {"format": "pt"})


def _prefixed(sd: dict) -> dict:
    return {"model." + k: v for k, v in sd.items()}


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["models", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


# ---- the registry -----------------------------------------------------------------------------------------------


def test_the_registry_is_consistent():
    assert len(set(registry.names())) == len(registry.KNOWN_MODELS) >= 6
    for m in registry.KNOWN_MODELS:
        assert m.folder in registry.FOLDERS and m.kind in registry.KINDS
        assert m.revision is None or re.fullmatch(r"[0-9a-f]{40}", m.revision), m.name
        assert m.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", m.sha256), m.name
        assert m.file.endswith(".safetensors"), m.name  # every file the workflows can name
        assert m.convert == m.path.endswith(".pt")
        assert m.convert or m.file == m.hub_file
        assert registry.by_name(m.name) is m and registry.by_file(m.folder, m.file) is m
        assert m.url().startswith(f"https://huggingface.co/{m.repo}/resolve/{m.revision}/")
    assert len({m.target for m in registry.KNOWN_MODELS}) == len(registry.KNOWN_MODELS)
    sf = registry.by_name("self-forcing-dmd")
    assert (sf.repo, sf.path, sf.folder, sf.file) == ("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt",
                                                      "diffusion_models", "self_forcing_dmd.safetensors")
    assert registry.by_name("longlive-base").use_generator and registry.by_name("longlive-lora").folder == "loras"


@pytest.mark.parametrize("changes, problem", [
    ({"folder": "../outside"}, "folder"), ({"file": "../x.safetensors"}, "plain file name"),
    ({"file": "sub/x.safetensors"}, "plain file name"), ({"path": "../x.pt"}, "relative path"),
    ({"sha256": "ABC"}, "sha256"), ({"revision": "main"}, "40-hex commit"), ({"file": "x.pt"}, ".safetensors"),
    ({"name": "Bad Name"}, "name"), ({"repo": "no-slash"}, "repo"),
])
def test_a_bad_registry_entry_is_refused(changes, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        replace(registry.by_name("self-forcing-dmd"), **changes)


def test_workflow_hints_are_derived_from_the_registry():
    for key, name in (("dit", registry.DEFAULT_DIT), ("text", "wan21-umt5-xxl-fp8"), ("vae", "wan21-vae")):
        model = registry.by_name(name)
        assert workflows.MODELS[key] == registry.workflow_hint(model)
        assert workflows.MODELS[key]["name"] == model.file and workflows.MODELS[key]["directory"] == model.folder
    assert "url" not in workflows.MODELS["dit"]  # a converted file has no URL of its own
    loaders = {"EchoForcingLoadCausalDiT": "dit", "CLIPLoader": "text", "VAELoader": "vae"}
    for make in workflows.WORKFLOWS:
        ui = workflows.ui_format(make())
        hints = [*ui["models"], *(h for n in ui["nodes"] for h in n["properties"].get("models", []))]
        assert {h["name"] for h in ui["models"]} == {"umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                                     "wan_2.1_vae.safetensors"}
        for hint in hints:  # what the frontend's schema and its Missing Models dialog accept
            assert set(hint) == {"name", "url", "directory"} and hint["name"].endswith(".safetensors")
            assert re.fullmatch(r"https://huggingface\.co/[^/]+/[^/]+/resolve/[0-9a-f]{40}/.+", hint["url"])
            assert hint["url"].endswith("/" + hint["name"])
        for node in ui["nodes"]:
            if node["type"] in loaders:  # every loader names the file `models download` writes
                assert node["widgets_values"][0] == workflows.MODELS[loaders[node["type"]]]["name"]


def test_an_unknown_name_lists_the_known_ones(capsys):
    code, out, err = _run(capsys, "download", "self-forcing", "--to", ".")
    assert code == 2 and out == ""
    assert err.startswith("error: no known model is called 'self-forcing'. Did you mean 'self-forcing-dmd'?")
    assert all(name in err for name in registry.names()) and "Traceback" not in err


def test_list_shows_every_entry_and_what_is_present(capsys, models_dir):
    vae = registry.by_name("wan21-vae")
    (models_dir / "vae" / vae.file).write_bytes(b"x")
    code, out, _ = _run(capsys, "list", "--to", str(models_dir))
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.split()[:1] and
            line.split()[0] in registry.names()}
    assert set(rows) == set(registry.names())
    assert rows["wan21-vae"][-1] == "yes" and rows["self-forcing-dmd"][-1] == "no"
    assert "self_forcing_dmd.safetensors" in out and "CC-BY-NC-SA-4.0" in out and "5.68 GB" in out


# ---- downloads -----------------------------------------------------------------------------------------------


def test_download_of_a_safetensors_file(hub, models_dir):
    data = _safetensors_bytes()
    hub.add("test-org/tiny", "split_files/vae/tiny_vae.safetensors", data)
    model = _entry("tiny-vae", "split_files/vae/tiny_vae.safetensors", data)
    result = dl.download(model, models_dir, endpoint=hub.url)
    target = models_dir / "vae" / "tiny_vae.safetensors"
    assert result.path == target and target.read_bytes() == data
    assert (result.revision, result.sha256, result.already_present, result.converted) == (COMMIT, _sha(data), False,
                                                                                          False)
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(registry.FOLDERS)  # no staging folder left
    assert [p.name for p in (models_dir / "vae").iterdir()] == ["tiny_vae.safetensors"]
    paths = {path for _, path, _ in hub.log}
    assert paths == {f"/test-org/tiny/resolve/{COMMIT}/split_files/vae/tiny_vae.safetensors"}  # the pinned commit
    assert [m for m, _, _ in hub.log] == ["HEAD", "GET"]

    again = dl.download(model, models_dir, endpoint=hub.url)  # already there: checked locally, the hub not asked
    assert again.already_present and len(hub.log) == 2


def test_hf_endpoint_is_the_default_hub(hub, models_dir, capsys, monkeypatch):
    data = _safetensors_bytes(1)
    hub.add("test-org/tiny", "tiny.safetensors", data)
    monkeypatch.setattr(registry, "KNOWN_MODELS", (_entry("tiny", "tiny.safetensors", data),))
    code, out, err = _run(capsys, "download", "tiny", "--to", str(models_dir))  # no --endpoint: HF_ENDPOINT
    assert code == 0, err
    assert (models_dir / "vae" / "tiny.safetensors").read_bytes() == data
    assert "SHA-256" in out and "verified" in out and len(hub.requests("GET")) == 1


def test_a_cut_connection_is_resumed_with_a_range_request(hub, models_dir, small_chunks):
    data = _safetensors_bytes(2, n=200_000)
    hub.add("test-org/tiny", "big.safetensors", data)
    hub.cut_first_get = True
    dl.download(_entry("big", "big.safetensors", data), models_dir, endpoint=hub.url)
    gets = hub.requests("GET")
    assert len(gets) == 2 and "range" not in gets[0][2]
    start = int(re.fullmatch(r"bytes=(\d+)-", gets[1][2]["range"])[1])
    assert 0 < start <= len(data) // 2 and start % (64 * 1024) == 0  # continued after the pieces written
    assert (models_dir / "vae" / "big.safetensors").read_bytes() == data


def test_an_interrupted_run_is_continued_by_the_next_run(hub, models_dir, small_chunks, capsys, monkeypatch):
    data = _safetensors_bytes(3, n=100_000)
    hub.add("test-org/tiny", "big.safetensors", data)
    monkeypatch.setattr(registry, "KNOWN_MODELS", (_entry("big", "big.safetensors", data),))
    hub.cut_every_get = True  # every attempt of the first run breaks off
    code, _, err = _run(capsys, "download", "big", "--to", str(models_dir), "--endpoint", hub.url)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "stopped at" in err and "run the same command again to continue it" in err
    (partial,) = (models_dir / dl.STAGING_FOLDER).iterdir()
    kept = partial.stat().st_size
    assert partial.name == f"big.{COMMIT[:12]}.safetensors.part" and 0 < kept < len(data)
    assert not (models_dir / "vae" / "big.safetensors").exists()

    hub.cut_every_get, first_run = False, len(hub.log)
    code, _, err = _run(capsys, "download", "big", "--to", str(models_dir), "--endpoint", hub.url)
    assert code == 0, err
    (get,) = [entry for entry in hub.log[first_run:] if entry[0] == "GET"]
    assert get[2]["range"] == f"bytes={kept}-"  # the second run asked only for the rest
    assert (models_dir / "vae" / "big.safetensors").read_bytes() == data
    assert not (models_dir / dl.STAGING_FOLDER).exists()


def test_a_wrong_hash_is_deleted_and_reported(hub, models_dir, capsys, monkeypatch):
    data = _safetensors_bytes(4)
    served = data[:-1] + bytes([data[-1] ^ 1])  # one bit flipped on the way, the hub's header still the pin
    hub.add("test-org/tiny", "tiny.safetensors", served, etag=_sha(data))
    monkeypatch.setattr(registry, "KNOWN_MODELS", (_entry("tiny", "tiny.safetensors", data),))
    code, _, err = _run(capsys, "download", "tiny", "--to", str(models_dir), "--endpoint", hub.url)
    assert code == 1 and "Traceback" not in err
    assert f"has SHA-256 {_sha(served)}, expected {_sha(data)}" in err and "deleted" in err
    assert not (models_dir / dl.STAGING_FOLDER).exists() and not (models_dir / "vae" / "tiny.safetensors").exists()


def test_a_hub_file_that_is_not_the_pinned_one_is_refused_before_the_transfer(hub, models_dir):
    data = _safetensors_bytes(5)
    hub.add("test-org/tiny", "tiny.safetensors", _safetensors_bytes(6))  # the hub reports its own, other digest
    with pytest.raises(dl.ModelDownloadError, match="not the pinned"):
        dl.download(_entry("tiny", "tiny.safetensors", data), models_dir, endpoint=hub.url)
    assert hub.requests("GET") == [] and not (models_dir / dl.STAGING_FOLDER).exists()


def test_an_entry_without_pins_is_checked_against_the_hub_and_records_the_commit(hub, models_dir):
    data = _safetensors_bytes(7)
    hub.add("test-org/tiny", "tiny.safetensors", data)
    lines = []
    model = _entry("tiny", "tiny.safetensors", data, revision=None, sha256=None)
    result = dl.download(model, models_dir, endpoint=hub.url, log=lines.append)
    assert result.revision == COMMIT and result.sha256 == _sha(data)
    assert hub.requests("HEAD")[0][1] == "/test-org/tiny/resolve/main/tiny.safetensors"
    assert hub.requests("GET")[0][1] == f"/test-org/tiny/resolve/{COMMIT}/tiny.safetensors"  # the resolved commit
    assert any("pins no revision" in line and COMMIT in line for line in lines)
    assert any("pins no SHA-256" in line and _sha(data) in line for line in lines)
    record = json.loads((models_dir / "vae" / "tiny.safetensors.source.json").read_text(encoding="utf-8"))
    assert (record["revision"], record["sha256"], record["pinned"]) == (COMMIT, _sha(data),
                                                                         {"revision": False, "sha256": False})


def test_a_missing_hub_file_names_the_entry(hub, models_dir):
    data = _safetensors_bytes(8)
    with pytest.raises(dl.ModelDownloadError, match=r"has no gone\.safetensors in test-org/tiny at revision"):
        dl.download(_entry("tiny", "gone.safetensors", data), models_dir, endpoint=hub.url)


# ---- pickle releases ----------------------------------------------------------------------------------------------


def test_a_pt_release_is_converted_to_the_same_tensors(hub, models_dir, tiny_config, tiny_state_dict):
    critic = random_wan_state_dict(tiny_config, seed=99)
    release = _torch_bytes({"generator_ema": _prefixed(tiny_state_dict), "critic": _prefixed(critic), "step": 600})
    hub.add("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt", release)
    model = replace(registry.by_name("self-forcing-dmd"), revision=COMMIT, sha256=_sha(release), size=len(release))
    result = dl.download(model, models_dir, endpoint=hub.url, log=lambda line: None)
    target = models_dir / "diffusion_models" / "self_forcing_dmd.safetensors"
    assert result.path == target and result.converted and not (models_dir / dl.STAGING_FOLDER).exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]

    original = models_dir.parent / "self_forcing_dmd.pt"
    original.write_bytes(release)
    for weights in ("auto", "ema"):  # the loader reads both files to exactly the same tensors
        for dtype in (torch.float32, torch.bfloat16):
            want = load_wan_checkpoint(original, weights=weights, dtype=dtype)
            got = load_wan_checkpoint(target, weights=weights, dtype=dtype)
            _assert_same(got.state_dict, want.state_dict)
            assert got.config == want.config == tiny_config and got.source == want.source
    for path in (original, target):  # and refuses the same choice
        with pytest.raises(CheckpointError, match="asks for the 'generator' entry"):
            load_wan_checkpoint(path, weights="generator")
    assert set(read_tensors(target)) == {"generator_ema"}
    with safe_open(str(target), framework="pt") as f:  # only the generator, under plain Wan names, with provenance
        assert set(f.keys()) == set(tiny_state_dict)
        meta = f.metadata()
    assert meta["echo_forcing.source_sha256"] == _sha(release) and meta["echo_forcing.source_revision"] == COMMIT
    assert meta["echo_forcing.source_entry"] == "generator_ema"
    assert meta["echo_forcing.source_path"] == "checkpoints/self_forcing_dmd.pt"
    assert dl.download(model, models_dir, endpoint=hub.url, log=lambda line: None).already_present


def test_longlive_base_and_lora_convert_and_merge_like_the_originals(hub, models_dir, tiny_config,
                                                                    tiny_state_dict):
    ema = random_wan_state_dict(tiny_config, seed=5)
    base = _torch_bytes({"generator": _prefixed(tiny_state_dict), "generator_ema": _prefixed(ema)})
    lora = tiny_lora_state_dict(tiny_config, rank=4, seed=1)
    lora_release = _torch_bytes({"generator_lora": lora, "critic_lora": {"x.lora_A.weight": torch.zeros(1)},
                                 "step": 3000})
    repo = "Efficient-Large-Model/LongLive-1.3B"
    hub.add(repo, "models/longlive_base.pt", base)
    hub.add(repo, "models/lora.pt", lora_release)
    pins = {"revision": COMMIT}
    base_model = replace(registry.by_name("longlive-base"), sha256=_sha(base), size=len(base), **pins)
    lora_model = replace(registry.by_name("longlive-lora"), sha256=_sha(lora_release), size=len(lora_release), **pins)
    quiet = {"endpoint": hub.url, "log": lambda line: None}
    base_out = dl.download(base_model, models_dir, **quiet).path
    lora_out = dl.download(lora_model, models_dir, **quiet).path
    assert (base_out.parent.name, lora_out.parent.name) == ("diffusion_models", "loras")
    originals = models_dir.parent / "longlive_base.pt", models_dir.parent / "lora.pt"
    originals[0].write_bytes(base)
    originals[1].write_bytes(lora_release)
    want = load_wan_checkpoint(originals[0], lora=originals[1], lora_alpha=4, dtype=torch.float32)
    got = load_wan_checkpoint(base_out, lora=lora_out, lora_alpha=4, dtype=torch.float32)
    _assert_same(got.state_dict, want.state_dict)
    with safe_open(str(base_out), framework="pt") as f:  # the LoRA's base: LongLive's generator, not the EMA
        assert f.metadata()["echo_forcing.source_entry"] == "generator"
        assert torch.equal(f.get_tensor("blocks.0.ffn.0.weight"), tiny_state_dict["blocks.0.ffn.0.weight"])
    with safe_open(str(lora_out), framework="pt") as f:
        assert set(f.keys()) == set(lora) and f.metadata()["echo_forcing.source_entry"] == "generator_lora"


class _Payload:
    """Unpickling this runs code that writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_a_pickle_that_runs_code_is_refused_and_never_run(hub, models_dir, tmp_path, tiny_state_dict):
    marker = tmp_path / "marker"
    release = _torch_bytes({"generator_ema": _prefixed(tiny_state_dict), "config": _Payload(marker)})
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()  # the payload really runs when unpickled
    hub.add("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt", release)
    model = replace(registry.by_name("self-forcing-dmd"), revision=COMMIT, sha256=_sha(release), size=len(release))
    with pytest.raises(dl.ModelDownloadError, match="refused for safety") as err:
        dl.download(model, models_dir, endpoint=hub.url, log=lambda line: None)
    assert "The checked download stays in" in str(err.value)
    assert not marker.exists() and not (models_dir / "diffusion_models" / model.file).exists()


def test_a_file_downloaded_by_hand_is_checked_and_converted(models_dir, tmp_path, tiny_state_dict, capsys,
                                                          monkeypatch):
    release = _torch_bytes({"generator_ema": _prefixed(tiny_state_dict)})
    model = replace(registry.by_name("self-forcing-dmd"), sha256=_sha(release), size=len(release))
    monkeypatch.setattr(registry, "KNOWN_MODELS", (model,))
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(release + b"\0")
    code, _, err = _run(capsys, "download", model.name, "--to", str(models_dir), "--file", str(wrong))
    assert code == 1 and f"expected {model.sha256}" in err and "nothing was written" in err
    assert wrong.exists() and not (models_dir / "diffusion_models" / model.file).exists()  # the user's file stays
    given = tmp_path / "self_forcing_dmd.pt"
    given.write_bytes(release)
    code, _, err = _run(capsys, "download", model.name, "--to", str(models_dir), "--file", str(given))
    assert code == 0, err
    _assert_same(load_wan_checkpoint(models_dir / "diffusion_models" / model.file, dtype=torch.float32).state_dict,
                 tiny_state_dict)
    assert given.read_bytes() == release


# ---- where files may go, and a hub that cannot be reached ----------------------------------------------------------


def test_a_target_outside_the_models_folder_is_refused(hub, models_dir, tmp_path, capsys, monkeypatch):
    data = _safetensors_bytes(9)
    hub.add("test-org/tiny", "tiny.safetensors", data)
    monkeypatch.setattr(registry, "KNOWN_MODELS", (_entry("tiny", "tiny.safetensors", data),))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (models_dir / "vae").rmdir()
    (models_dir / "vae").symlink_to(outside, target_is_directory=True)  # the folder leads out
    code, _, err = _run(capsys, "download", "tiny", "--to", str(models_dir), "--endpoint", hub.url)
    assert code == 2 and "outside the output folder" in err and "Traceback" not in err
    (models_dir / "vae").unlink()
    (models_dir / "vae").mkdir()
    (models_dir / "vae" / "tiny.safetensors").symlink_to(outside / "tiny.safetensors")  # the file leads out
    code, _, err = _run(capsys, "download", "tiny", "--to", str(models_dir / "vae" / ".."), "--endpoint", hub.url)
    assert code == 2 and "symbolic link" in err
    (models_dir / dl.STAGING_FOLDER).symlink_to(outside, target_is_directory=True)  # the staging folder leads out
    (models_dir / "vae" / "tiny.safetensors").unlink()
    code, _, err = _run(capsys, "download", "tiny", "--to", str(models_dir), "--endpoint", hub.url)
    assert code == 2 and dl.STAGING_FOLDER in err
    assert list(outside.iterdir()) == [] and hub.log == []  # every refusal came before the hub was asked
    code, _, err = _run(capsys, "download", "tiny", "--to", str(tmp_path / "no such folder"))
    assert code == 2 and "does not exist" in err
    code, _, err = _run(capsys, "download", "tiny", "--to", str(models_dir.parent))  # ComfyUI, not its models
    assert code == 2 and "holds none of diffusion_models/" in err


def test_another_file_of_the_same_name_needs_force(hub, models_dir):
    data = _safetensors_bytes(10)
    hub.add("test-org/tiny", "tiny.safetensors", data)
    model = _entry("tiny", "tiny.safetensors", data)
    mine = models_dir / "vae" / "tiny.safetensors"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(dl.ModelDownloadError, match="pass --force") as err:
        dl.download(model, models_dir, endpoint=hub.url)
    assert err.value.exit_code == 2 and mine.read_bytes() == b"the user's own file" and hub.log == []
    dl.download(model, models_dir, endpoint=hub.url, force=True)
    assert mine.read_bytes() == data


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_gives_one_clear_line(hub, models_dir, capsys):
    started = time.monotonic()
    code, _, err = _run(capsys, "download", "self-forcing-dmd", "--to", str(models_dir), "--endpoint",
                          f"http://127.0.0.1:{_closed_port()}")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: cannot reach the Hugging Face hub at http://127.0.0.1:")
    sf = registry.by_name("self-forcing-dmd")
    assert f"/gdhe17/Self-Forcing/resolve/{sf.revision}/checkpoints/self_forcing_dmd.pt" in err  # where to get it
    assert str(models_dir / "diffusion_models") in err and "--file" in err  # where it goes, and how
    assert time.monotonic() - started < 15 and not (models_dir / dl.STAGING_FOLDER).exists()


def test_offline_mode_is_named(hub, models_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _run(capsys, "download", "wan21-vae", "--to", str(models_dir))
    assert code == 1 and "offline mode (HF_HUB_OFFLINE is set)" in err and "Traceback" not in err
    assert str(models_dir / "vae") in err and hub.log == []


def test_an_unknown_entry_in_the_metadata_is_not_trusted(tmp_path, tiny_state_dict):
    """Only the research entries the loader knows nest a file's tensors; any other value is ignored."""
    path = tmp_path / "x.safetensors"
    save_file(tiny_state_dict, str(path), metadata={"echo_forcing.source_entry": "not-an-entry"})
    assert set(read_tensors(path)) == set(tiny_state_dict)  # an unknown entry in the metadata is not trusted
