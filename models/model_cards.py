"""Model cards: one small declarative record per causal student, with the settings it was trained for.

A card says what a checkpoint is (architecture, latent channels) and how it must be sampled (frames per block,
the denoising steps of every block and of the first one, shift, the cache length it was trained with) plus what
the pack recommends with it (cache presets), its licence and the registry files that hold it
(``models/registry.py``). The loader picks a card for the file it loads (:func:`card_for_file`) and checks it
against the weights (:meth:`ModelCard.check_weights`); every field can be overridden (:meth:`ModelCard.override`),
and an override the family was not trained for is refused with the values it was trained for.

Keys and shapes cannot tell the released 1.3B students apart: Self-Forcing, CausVid, LongLive and Causal
Forcing all store the plain Wan2.1-T2V-1.3B layout. A file is recognised by its registry name (what ``models
download`` writes) or by its size where the size is unique; otherwise the loader uses the architecture's
default card and says so.

Pure data and lookups: no torch, no ComfyUI, no file reads beyond ``os.stat``. Adding a model is adding a card
(and a registry entry); a strategy in ``models/`` or ``memory/`` is needed only where its numerics differ.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from . import registry

WAN21_T2V_1_3B = "wan2.1-t2v-1.3b"
WAN21_T2V_14B = "wan2.1-t2v-14b"
WAN22_TI2V_5B = "wan2.2-ti2v-5b"
WAN21_LATENT_CHANNELS = 16
ARCHITECTURES = {WAN21_T2V_1_3B: (1536, 30, 16), WAN21_T2V_14B: (5120, 40, 16), WAN22_TI2V_5B: (3072, 30, 48)}
"""Architecture -> (width, layers, latent channels) of the DiT."""

SF_STEPS = (1000, 750, 500, 250)
"""The 4-step list (warped with shift 5: timesteps 1000, 937.5, 833.3, 625) of Self-Forcing and its successors."""


class ModelCardError(ValueError):
    """A card that does not fit the weights, an unknown card, or an override its family cannot run."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    family: str
    title: str
    architecture: str
    frames_per_block: int
    block_sizes: tuple[int, ...]
    """The block sizes the student was trained with (an override outside them is refused)."""
    steps: tuple[int, ...] = SF_STEPS
    first_block_steps: tuple[int, ...] | None = None
    """Steps of the first block the video denoises when they differ from ``steps`` (Causal Forcing++)."""
    shift: float = 5.0
    warp: bool = True
    trained_frames: int = 21
    """Latent frames of the videos it was trained on (its KV cache: 21 frames = 81 video frames)."""
    presets: tuple[str, ...] = ("echo-forcing", "self-forcing")
    """Cache presets the pack recommends with it, best first."""
    licence: str = ""
    files: tuple[str, ...] = ()
    """Registry names of the files that hold it."""
    notes: str = ""
    memory_expert: bool = False
    """The student keeps a second set of weights that writes the cache (SGF+, ``models.memory_expert``)."""
    solver: str = "self-forcing"
    """How a block is denoised: "self-forcing" (x0 then fresh noise) or "unipc" (LongLive 2.0, whose ``steps`` are
    then the solver's timesteps at the card's shift)."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ModelCardError(f"card {self.name!r}: unknown architecture {self.architecture!r}")
        if self.frames_per_block not in self.block_sizes:
            raise ModelCardError(f"card {self.name!r}: {self.frames_per_block} frames per block, but it was trained "
                                 f"with {_listed(self.block_sizes)}")
        for steps in (self.steps, self.first_block_steps or self.steps):
            if not steps or any(not 0 <= s <= 1000 for s in steps) or 0 in steps[:-1] or steps == (0,) \
                    or list(steps) != sorted(set(steps), reverse=True):
                raise ModelCardError(f"card {self.name!r}: steps must be strictly decreasing in 1..1000 (the last may "
                                     f"be 0), got {list(steps)}")
        for file in self.files:
            registry.by_name(file)

    @property
    def latent_channels(self) -> int:
        return ARCHITECTURES[self.architecture][2]

    def settings(self) -> dict:
        """The sampling settings of the card, as ``pipeline.RolloutSettings`` keywords."""
        return {"frames_per_block": self.frames_per_block, "steps": self.steps,
                "first_block_steps": self.first_block_steps, "shift": self.shift, "warp": self.warp,
                "solver": self.solver, "vae_stride": 16 if self.latent_channels == 48 else 8}

    def override(self, **changes) -> ModelCard:
        """This card with some fields replaced; a block size the student was not trained for is refused."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ModelCardError(f"model cards have no field {', '.join(sorted(unknown))}")
        block = changes.get("frames_per_block", self.frames_per_block)
        if block not in self.block_sizes:
            raise ModelCardError(f"{self.title} was trained with {_listed(self.block_sizes)} latent frames per "
                                 f"block; {block} would give frames it never learned to continue")
        return dataclasses.replace(self, **changes)

    def check_latents(self, in_dim: int) -> None:
        """Refuse a model that reads another number of latent channels than the card's."""
        if in_dim != self.latent_channels:
            raise ModelCardError(f"the model card {self.name!r} is for {self.latent_channels}-channel latents but the "
                                 f"model reads {in_dim}; choose the card of this model")

    def check_weights(self, dim: int, num_layers: int, in_dim: int, memory_expert: bool = False) -> None:
        """Refuse weights of another architecture than the card's (width, layers, latent channels), or with a
        memory expert where the card has none (and the reverse)."""
        if memory_expert != self.memory_expert:
            raise ModelCardError(
                f"the model card {self.name!r} is for a student with an SGF+ memory expert, but the file holds none; "
                "choose the card of this model (sgf-chunkwise or sgf-framewise for Self Gradient Forcing)"
                if self.memory_expert else
                f"the file holds an SGF+ memory expert (memory_* tensors), which the model card {self.name!r} does not "
                "describe; choose an sgf-plus card")
        want = ARCHITECTURES[self.architecture]
        if (dim, num_layers, in_dim) != want:
            raise ModelCardError(
                f"the model card {self.name!r} is for {self.architecture} (width {want[0]}, {want[1]} layers, "
                f"{want[2]} latent channels) but the weights have width {dim}, {num_layers} layers and {in_dim} "
                "latent channels; choose the card of this model")


def _listed(sizes: tuple[int, ...]) -> str:
    return " or ".join(str(s) for s in sizes)


_NC = "CC-BY-NC-SA-4.0"
CARDS: tuple[ModelCard, ...] = (
    ModelCard("self-forcing", "self-forcing", "Self-Forcing DMD", WAN21_T2V_1_3B, 3, (3,), licence=_NC,
              files=("self-forcing-dmd",), notes="the pack's default model; Echo-Forcing was built on it"),
    ModelCard("self-forcing-10s", "self-forcing", "Self-Forcing 10 s (unofficial settings)", WAN21_T2V_1_3B, 3, (3,),
              trained_frames=42, presets=("self-forcing",), licence=_NC,
              notes="checkpoints/self_forcing_10s.pt on the Self-Forcing hub repo (gdhe17/Self-Forcing) comes with no "
                    "published settings (its GitHub issue #60 is unanswered); these are inferred from the training "
                    "code, which attends to the last 21 frames past 21: 3-frame blocks, 4 steps, the self-forcing "
                    "preset's rolling 21 frames, 42 latent frames (about 10 s). No public pin yet"),
    ModelCard("causvid", "causvid", "CausVid", WAN21_T2V_1_3B, 3, (3,), licence=_NC, files=("causvid",)),
    ModelCard("longlive", "longlive", "LongLive 1.3B (base + LoRA)", WAN21_T2V_1_3B, 3, (3,),
              presets=("longlive", "echo-forcing"), licence=_NC, files=("longlive-base", "longlive-lora"),
              notes="trained with a 3-frame sink and a 12-frame local window; its preset re-caches at prompt switches"),
    ModelCard("reward-forcing", "reward-forcing", "Reward Forcing", WAN21_T2V_1_3B, 3, (3,),
              presets=("reward-forcing", "echo-forcing"), licence="Apache-2.0",
              notes="released with a 9-frame cache whose sink follows the frames that leave it; its hub file "
                    "(JaydenLu666/Reward-Forcing-T2V-1.3B, rewardforcing.pt) has no public pin yet, so it is not "
                    "in the registry and its file is not recognised: choose this card"),
    ModelCard("causal-forcing-chunkwise", "causal-forcing", "Causal Forcing (chunk-wise)", WAN21_T2V_1_3B, 3, (3,),
              licence="Apache-2.0", files=("causal-forcing-chunkwise",)),
    ModelCard("causal-forcing-framewise", "causal-forcing", "Causal Forcing (frame-wise)", WAN21_T2V_1_3B, 1, (1,),
              presets=("self-forcing",), licence="Apache-2.0", files=("causal-forcing-framewise",),
              notes="one latent frame per block; Echo-Forcing's memory works on 3-frame blocks, so its presets do "
                    "not apply"),
    ModelCard("causal-forcing++-2step", "causal-forcing++", "Causal Forcing++ (frame-wise, 2 steps)",
              WAN21_T2V_1_3B, 1, (1,), steps=(1000, 500), first_block_steps=SF_STEPS, presets=("self-forcing",),
              licence="Apache-2.0", files=("causal-forcing-pp-2step",),
              notes="the first denoised frame takes 4 steps, every later one 2"),
    ModelCard("rolling-forcing", "rolling-forcing", "Rolling Forcing", WAN21_T2V_1_3B, 3, (3,),
              steps=(1000, 800, 600, 400, 200), presets=("rolling-forcing",),
              licence="Tencent academic use only (GitHub LICENSE; the hub card says MIT)",
              notes="denoises a window of 5 blocks at once at staggered noise levels (the rolling-forcing preset), "
                    "official noise order only; its hub file (TencentARC/RollingForcing, "
                    "checkpoints/rolling_forcing_dmd.pt) has no public pin yet"),
    ModelCard("longlive2-5b", "longlive2", "LongLive 2.0 5B (Wan2.2 TI2V-5B)", WAN22_TI2V_5B, 8, (8,),
              steps=(999, 937, 833, 624), solver="unipc", trained_frames=32, presets=("longlive2",),
              licence="Apache-2.0",
              notes="48-channel Wan2.2 latents (VAE stride 16: sizes in multiples of 32 pixels, trained at 1280x704), "
                    "8-frame blocks, 4 flow UniPC steps; a hard cut or recall starts a new shot (RoPE +8, pinned "
                    "block). Its hub file (Efficient-Large-Model/LongLive-2.0-5B, model_bf16.pt) has no public pin "
                    "yet; the NVFP4 releases are not supported"),
    ModelCard("krea-realtime-14b", "krea", "Krea Realtime 14B", WAN21_T2V_14B, 3, (3,),
              steps=(1000, 750, 500, 250, 0), presets=("krea",),
              licence="Apache-2.0 (weights; the inference code is CC BY-NC-SA 4.0)",
              notes="re-encodes a 3-frame clean context before every block (the krea preset) and ends each block "
                    "with a call at timestep 0; its hub file (krea/krea-realtime-video, "
                    "krea-realtime-video-14b.safetensors) has no public pin yet. Give the sampler the Wan2.1 VAE for "
                    "the release's default (the first context frame re-encoded from decoded pixels); the attention "
                    "bias is Echo Memory Config's attention_bias"),
    ModelCard("sgf-chunkwise", "sgf", "Self Gradient Forcing (chunk-wise)", WAN21_T2V_1_3B, 3, (3,),
              presets=("sgf", "echo-forcing"), licence="Apache-2.0",
              notes="released with a 12-frame long-video cache (sink 3, slot positions): the sgf preset; its hub "
                    "files (JunhaoZhuang/Self_Gradient_Forcing) have no public pin yet"),
    ModelCard("sgf-framewise", "sgf", "Self Gradient Forcing (frame-wise)", WAN21_T2V_1_3B, 1, (1,),
              presets=("sgf-framewise",), licence="Apache-2.0",
              notes="one latent frame per block, a 21-frame long-video cache with a 4-frame sink"),
    ModelCard("sgf-plus-chunkwise", "sgf-plus", "SGF+ (chunk-wise, memory expert)", WAN21_T2V_1_3B, 3, (3,),
              presets=("sgf", "echo-forcing"), licence="Apache-2.0", memory_expert=True,
              notes="a second copy of the weights (the memory expert) writes the cache; the file holds both. Its "
                    "hub files (ZihanSu/Self_Gradient_Forcing_Plus) have no public pin yet"),
    ModelCard("sgf-plus-framewise", "sgf-plus", "SGF+ (frame-wise, memory expert)", WAN21_T2V_1_3B, 1, (1,),
              presets=("sgf-framewise",), licence="Apache-2.0", memory_expert=True,
              notes="one latent frame per block; a second copy of the weights (the memory expert) writes the cache"),
    ModelCard("causal-forcing++-1step", "causal-forcing++", "Causal Forcing++ (frame-wise, 1 step)",
              WAN21_T2V_1_3B, 1, (1,), steps=(1000,), first_block_steps=SF_STEPS, presets=("self-forcing",),
              licence="Apache-2.0", files=("causal-forcing-pp-1step",),
              notes="the first denoised frame takes 4 steps, every later one 1"),
)

DEFAULT_CARD = {WAN21_T2V_1_3B: "self-forcing", WAN21_T2V_14B: "self-forcing", WAN22_TI2V_5B: "longlive2-5b"}
"""The card an unrecognised file of an architecture gets (its settings are the Self-Forcing family's)."""
DEFAULT_EXPERT_CARD = "sgf-plus-chunkwise"
"""The card of an unrecognised file with an SGF+ memory expert (its keys say SGF+, not which block size)."""


def names() -> list[str]:
    return [c.name for c in CARDS]


def by_name(name: object) -> ModelCard:
    for card in CARDS:
        if card.name == name:
            return card
    raise ModelCardError(f"no model card is called {str(name)[:80]!r}; known cards: {', '.join(names())}")


def architecture_of(dim: int, num_layers: int, in_dim: int) -> str | None:
    """The architecture of a DiT with this width, depth and latent channels, or None."""
    return next((a for a, shape in ARCHITECTURES.items() if shape == (dim, num_layers, in_dim)), None)


def card_for_file(path: str | os.PathLike, dim: int, num_layers: int, in_dim: int,
                  memory_expert: bool = False) -> tuple[ModelCard | None, str]:
    """The card of the checkpoint at ``path`` with these weights, and how it was found (for the report).

    By the registry's file name (what ``models download`` writes), else by the file's size when exactly one
    registry file has it, else :func:`default_card`; the card is checked against the weights. ``memory_expert``:
    the file holds SGF+'s memory expert (its keys say so).
    """
    name = os.path.basename(os.fspath(path))
    entry = next((m for m in registry.KNOWN_MODELS if m.file == name and m.kind == "dit"), None)
    how = f"recognised by its name {name}"
    if entry is None:
        size = os.stat(path).st_size
        sized = [m for m in registry.KNOWN_MODELS if m.kind == "dit" and m.size == size]
        entry = sized[0] if len(sized) == 1 else None
        how = f"recognised by its size ({size:,} bytes)"
    card = next((c for c in CARDS if entry is not None and entry.name in c.files), None)
    if card is None:
        return default_card(dim, num_layers, in_dim, name, memory_expert)
    card.check_weights(dim, num_layers, in_dim, memory_expert)
    return card, how


def default_card(dim: int, num_layers: int, in_dim: int, what: str = "the model",
                 memory_expert: bool = False) -> tuple[ModelCard | None, str]:
    """The card of a DiT no file name or size identifies: its architecture's default card, or None for a Wan2.1
    text-to-video DiT of a size no card describes (a custom or test model; it gets Self-Forcing's 3-frame, 4-step
    settings); a Wan2.2 (48-channel) DiT of an unknown size gets LongLive 2.0's. Another latent layout is refused:
    nothing says how it must be sampled."""
    architecture = architecture_of(dim, num_layers, in_dim)
    if memory_expert:
        card = by_name(DEFAULT_EXPERT_CARD)
        card.check_weights(dim, num_layers, in_dim, memory_expert)
        return card, (f"{what} holds an SGF+ memory expert: it gets the {card.title} settings (its keys do not say "
                      "the block size; choose sgf-plus-framewise for the frame-wise release)")
    if architecture is not None:
        card = by_name(DEFAULT_CARD[architecture])
        return card, (f"{what} is not a known release: it gets the {card.title} settings of its architecture "
                      f"({architecture}); choose its model card if it is another student")
    if in_dim == WAN21_LATENT_CHANNELS:
        return None, (f"{what} is a Wan2.1 DiT of width {dim} and {num_layers} layers, which no model card describes: "
                      "it gets Self-Forcing's settings (3-frame blocks, 4 steps)")
    if in_dim == ARCHITECTURES[WAN22_TI2V_5B][2]:  # the Wan2.2 latent layout has one causal student: LongLive 2.0
        card = by_name(DEFAULT_CARD[WAN22_TI2V_5B])
        return card, (f"{what} is a Wan2.2 DiT of width {dim} and {num_layers} layers ({in_dim} latent channels), "
                      f"which no model card describes: it gets the {card.title} settings, the only causal student of "
                      "that latent layout")
    raise ModelCardError(f"{what} is a Wan DiT of width {dim}, {num_layers} layers and {in_dim} latent channels, "
                         f"which no model card describes (known: {', '.join(ARCHITECTURES)})")


def by_file() -> dict[str, str]:
    """Registry file name -> the name of the card that describes it (what ``auto`` recognises by name)."""
    return {registry.by_name(f).file: card.name for card in CARDS for f in card.files
            if registry.by_name(f).kind == "dit"}


def table() -> dict:
    """The cards as plain data for the canvas (its timeline plans blocks of the card's size before a run)."""
    return {"cards": {c.name: {"title": c.title, "frames_per_block": c.frames_per_block, "steps": list(c.steps)}
                      for c in CARDS},
            "files": by_file(), "default_frames_per_block": 3}
