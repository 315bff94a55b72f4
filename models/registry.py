"""The model files the pack knows by name: one registry that ``python -m echo_forcing models``, the example
workflows' download hints (``cli/workflows.py``) and Load Causal DiT's messages all read.

Pure data and lookups: no network, no torch, no ComfyUI. Each :class:`KnownModel` pins a file of a Hugging
Face repository to a commit and to the SHA-256 of that file (the hub's LFS object id), and says where the
file goes in a ComfyUI models folder and under which name. Research releases that are torch pickles
(``.pt``) are converted by ``models download`` to ``.safetensors`` (loaded with ``weights_only=True``, the
generator entry the pack's loader would pick, plain Wan2.1 names), because the frontend's Missing Models
dialog (1.27) refuses ``.pt`` files and safetensors never run code when read.

Where the pinned values come from (each was found in public material quoting the hub; a value that could not
be found would be ``None`` and ``models download`` would then check the file against the SHA-256 the hub
reports for its LFS object and record the commit it resolved):

* Self-Forcing DMD: commit ``2f8b7792…`` is the snapshot of ``gdhe17/Self-Forcing`` that several projects load
  ``checkpoints/self_forcing_dmd.pt`` from; size 5,676,252,553 bytes and SHA-256 ``a0413986…`` are pinned at
  that commit by a runtime doctor script and repeated by independent experiment scripts. Licence: the model
  card's ``license: cc-by-nc-sa-4.0``.
* CausVid: ``tianweiy/CausVid`` commit ``b545eb27…`` (main on 2025-05-17), ``autoregressive_checkpoint/
  model.pt`` of 11,352,649,716 bytes, SHA-256 ``8b75a848…`` as an adapter that pins this revision checks it;
  CC BY-NC-SA 4.0.
* LongLive 1.3B: ``Efficient-Large-Model/LongLive-1.3B`` commit ``cda9138d…``, ``models/longlive_base.pt``
  (5,676,334,208 bytes, ``10a2aa8f…``) and ``models/lora.pt`` (2,800,056,690 bytes, ``c4e43b87…``), the LFS
  SHA-256 values from the hub API; the model card says ``cc-by-nc-sa-4.0`` (the code is Apache-2.0 since
  2025-11).
* Causal Forcing and Causal Forcing++: ``zhuhz22/Causal-Forcing`` commit ``2f8eb8bb…`` (pinned by three
  independent projects); sizes and SHA-256 of the four students as a third-party doctor script quotes the hub's
  LFS records (the chunk-wise SHA-256 confirmed by a second source); the model card says Apache-2.0.
* Wan2.1 umT5-XXL fp8 text encoder and VAE: ``Comfy-Org/Wan_2.1_ComfyUI_repackaged`` commit ``06e001fc…``,
  6,735,906,897 bytes ``c3355d30…`` and 253,815,318 bytes ``2fc39d31…``, the same values in many independent
  download manifests. The repackaged repository declares no licence; Wan2.1 and umT5 are Apache-2.0.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from urllib.parse import quote

HUB = "https://huggingface.co"
"""The public hub; ``models download --endpoint`` (or ``HF_ENDPOINT``) names a mirror instead."""
FOLDERS = ("diffusion_models", "text_encoders", "vae", "loras")
"""ComfyUI model folders a registry file may go in."""
KINDS = ("dit", "lora", "text_encoder", "vae")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,39}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class UnknownModelError(ValueError):
    """A name that is not in the registry; the message lists the known names."""


@dataclass(frozen=True)
class KnownModel:
    """One downloadable file: where it lives on the hub, pinned, and where ``models download`` puts it.

    ``revision`` is a 40-hex commit and ``sha256`` the SHA-256 of the hub file (its LFS object id); either may be
    ``None`` when no trustworthy value was found (then the download checks against what the hub reports at the
    commit it resolves, and says so). ``file`` is the name written into ``<models>/<folder>/``: the hub file's
    own name, or a ``.safetensors`` name when the hub file is a pickle (``convert``). ``use_generator``: a
    conversion takes ``generator`` before ``generator_ema`` (LongLive trained its LoRA on ``generator``).
    """

    name: str
    family: str
    kind: str
    repo: str
    path: str
    revision: str | None
    sha256: str | None
    size: int | None
    licence: str
    folder: str
    file: str
    description: str
    use_generator: bool = False

    def __post_init__(self):
        problems = []
        if not _NAME.match(self.name):
            problems.append(f"name {self.name!r} is not lower-case letters, digits, '.' and '-'")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not _REPO.match(self.repo) or ".." in self.repo:
            problems.append(f"repo {self.repo!r} is not 'owner/name'")
        if not self.path or self.path.startswith("/") or any(p in ("", ".", "..") for p in self.path.split("/")):
            problems.append(f"path {self.path!r} is not a relative path inside the repository")
        if self.revision is not None and not _COMMIT.match(self.revision):
            problems.append(f"revision {self.revision!r} is not a 40-hex commit")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            problems.append(f"sha256 {self.sha256!r} is not 64 lower-case hex digits")
        if self.size is not None and (not isinstance(self.size, int) or self.size <= 0):
            problems.append(f"size {self.size!r} is not a positive number of bytes")
        if self.folder not in FOLDERS:
            problems.append(f"folder {self.folder!r} is not one of {', '.join(FOLDERS)}")
        if not _FILE.match(self.file) or ".." in self.file:
            problems.append(f"file {self.file!r} is not a plain file name")
        pickle = self.path.lower().endswith(PICKLE_SUFFIXES)
        if pickle and not self.file.endswith(".safetensors"):
            problems.append(f"the hub file {self.path} is a pickle, so file must be a .safetensors name")
        if not pickle and self.file != self.hub_file:
            problems.append(f"file {self.file!r} must be the hub file's own name {self.hub_file!r}")
        if problems:
            raise ValueError(f"registry entry {self.name!r}: " + "; ".join(problems))

    @property
    def hub_file(self) -> str:
        """The hub file's own name (the last part of ``path``)."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def convert(self) -> bool:
        """Whether ``models download`` converts the hub file (a pickle) to safetensors."""
        return self.path.lower().endswith(PICKLE_SUFFIXES)

    def url(self, revision: str | None = None, endpoint: str = HUB) -> str:
        """The hub's resolve URL of the file at ``revision`` (default: the pinned one, else ``main``)."""
        rev = revision or self.revision or "main"
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{quote(rev, safe='')}/{quote(self.path)}"

    @property
    def target(self) -> str:
        """Where the file goes, relative to a ComfyUI models folder."""
        return f"{self.folder}/{self.file}"


_SF = "Self-Forcing DMD: causal Wan2.1-T2V-1.3B, 4 steps, the pack's default model"
_WAN21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
_WAN21_REVISION = "06e001fc51048fb03433a6fb25334de7836704a5"
_WAN_LICENCE = "Apache-2.0 (Wan2.1; the repackaged repository declares none)"
_CF = "zhuhz22/Causal-Forcing"
_CF_REVISION = "2f8eb8bb6eeb1238da9d13e5420d342a74d634a6"

KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("self-forcing-dmd", "self-forcing", "dit", "gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt",
               "2f8b779212da279d212c22a509b66ad6552f350e",
               "a0413986d9734e02c09504e1520f5697ba6df731bb2f0f35577485e9cc8f56a3", 5_676_252_553,
               "CC-BY-NC-SA-4.0", "diffusion_models", "self_forcing_dmd.safetensors", _SF),
    KnownModel("causvid", "causvid", "dit", "tianweiy/CausVid", "autoregressive_checkpoint/model.pt",
               "b545eb2728fc9d1515023a270b847f7b24b3aa89",
               "8b75a848a525a6ab0b8cefa7f2a3997aefb581eb5824ad60bafb5337e81e521c", 11_352_649_716,
               "CC-BY-NC-SA-4.0", "diffusion_models", "causvid_autoregressive.safetensors",
               "CausVid autoregressive DMD student (its generator entry)"),
    KnownModel("longlive-base", "longlive", "dit", "Efficient-Large-Model/LongLive-1.3B", "models/longlive_base.pt",
               "cda9138d93872ef109d9a74c270184eb3a5acc6e",
               "10a2aa8fcf89c77d9033f4c117405412a690e289625766619d293f0c5a208ee7", 5_676_334_208,
               "CC-BY-NC-SA-4.0", "diffusion_models", "longlive_base.safetensors",
               "LongLive 1.3B base (its generator); use it with longlive-lora", use_generator=True),
    KnownModel("longlive-lora", "longlive", "lora", "Efficient-Large-Model/LongLive-1.3B", "models/lora.pt",
               "cda9138d93872ef109d9a74c270184eb3a5acc6e",
               "c4e43b87d62d4b0614b496773639f1ab170a7ee486dc23407901e9d3a5ebc07a", 2_800_056_690,
               "CC-BY-NC-SA-4.0", "loras", "longlive_lora.safetensors",
               "LongLive's rank-256 LoRA, merged into longlive-base by Load Causal DiT"),
    KnownModel("causal-forcing-chunkwise", "causal-forcing", "dit", _CF, "chunkwise/causal_forcing.pt", _CF_REVISION,
               "cf75ee5cc6f4e2e336c59c973f5544655d8f0aa481761efe6de1b9cb2eb0cd9d", 5_676_282_643, "Apache-2.0",
               "diffusion_models", "causal_forcing_chunkwise.safetensors",
               "Causal Forcing chunk-wise student (its generator entry), 3-frame blocks, 4 steps", use_generator=True),
    KnownModel("causal-forcing-framewise", "causal-forcing", "dit", _CF, "framewise/causal_forcing.pt", _CF_REVISION,
               "70cae8c3b0b7191fa9840b4f6fe8655ba0cf5c6520c87ba85a46b861c3735cd3", 5_676_220_819, "Apache-2.0",
               "diffusion_models", "causal_forcing_framewise.safetensors",
               "Causal Forcing frame-wise student (generator_ema), 1-frame blocks, 4 steps, text and image start"),
    KnownModel("causal-forcing-pp-2step", "causal-forcing++", "dit", _CF, "causal-forcing++/framewise-2step.pt",
               _CF_REVISION, "8f899a016dffb9539788fac82c6200e43ef6e23b6e61ec6b885bb507a760ce42", 5_676_220_819,
               "Apache-2.0", "diffusion_models", "causal_forcing_pp_2step.safetensors",
               "Causal Forcing++ frame-wise, 2 steps (the first frame 4)"),
    KnownModel("causal-forcing-pp-1step", "causal-forcing++", "dit", _CF, "causal-forcing++/framewise-1step.pt",
               _CF_REVISION, "bdb1b475fc88d528f510158a0990cd457f02c661b527ceb11ca9e4728533e2d0", 5_676_220_819,
               "Apache-2.0", "diffusion_models", "causal_forcing_pp_1step.safetensors",
               "Causal Forcing++ frame-wise, 1 step (the first frame 4)"),
    KnownModel("wan21-umt5-xxl-fp8", "wan-text-encoder", "text_encoder", _WAN21,
               "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", _WAN21_REVISION,
               "c3355d30191f1f066b26d93fba017ae9809dce6c627dda5f6a66eaa651204f68", 6_735_906_897, _WAN_LICENCE,
               "text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
               "umT5-XXL text encoder, scaled fp8 (CLIPLoader type wan)"),
    KnownModel("wan21-vae", "wan-vae", "vae", _WAN21, "split_files/vae/wan_2.1_vae.safetensors", _WAN21_REVISION,
               "2fc39d31359a4b0a64f55876d8ff7fa8d780956ae2cb13463b0223e15148976b", 253_815_318, _WAN_LICENCE,
               "vae", "wan_2.1_vae.safetensors", "Wan2.1 VAE (VAELoader)"),
)

DEFAULT_DIT = "self-forcing-dmd"
"""The model the example workflows load."""


def names() -> list[str]:
    return [m.name for m in KNOWN_MODELS]


def by_name(name: object) -> KnownModel:
    """The entry called ``name``; :class:`UnknownModelError` lists the known names (and a close match)."""
    for model in KNOWN_MODELS:
        if model.name == name:
            return model
    text = name if isinstance(name, str) else type(name).__name__
    close = difflib.get_close_matches(text.lower(), names(), n=1) if isinstance(name, str) else []
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownModelError(f"no known model is called {text[:80]!r}.{hint} Known models: {', '.join(names())} "
                            "(python -m echo_forcing models list describes them)")


def by_file(folder: str, file: str) -> KnownModel | None:
    """The entry that writes ``file`` into ``folder``, if any."""
    return next((m for m in KNOWN_MODELS if m.folder == folder and m.file == file), None)


def files_in(folder: str, kind: str | None = None) -> list[KnownModel]:
    """The entries whose file goes in ``folder`` (of one ``kind`` if given), in registry order."""
    return [m for m in KNOWN_MODELS if m.folder == folder and (kind is None or m.kind == kind)]


def download_command(name: str, models_dir: str = "<ComfyUI>/models") -> str:
    """The command that writes the model ``name`` (a registry name, or a placeholder) into ``models_dir``."""
    return f"python -m echo_forcing models download {name} --to {models_dir}"


def workflow_hint(model: KnownModel) -> dict[str, str]:
    """The frontend's model hint for ``model`` (a ``models`` entry of a workflow or a loader node).

    ``url`` (the resolve URL at the pinned commit) is given only when the file ``download`` writes is the hub
    file itself; a converted file has no URL of its own, and the frontend's workflow schema requires a URL in
    every hint, so writers leave a hint without ``url`` out of the workflow (Load Causal DiT's message then names
    the download command).
    """
    hint = {"name": model.file, "directory": model.folder}
    if not model.convert and model.revision is not None:
        hint["url"] = model.url()
    return hint


def _check_unique() -> None:
    seen_names, seen_files = set(), set()
    for model in KNOWN_MODELS:
        if model.name in seen_names or model.target in seen_files:
            raise ValueError(f"registry entry {model.name!r} repeats a name or a target file ({model.target})")
        seen_names.add(model.name)
        seen_files.add(model.target)


_check_unique()
