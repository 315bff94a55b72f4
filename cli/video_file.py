"""H.264 MP4 files that browsers play, written with PyAV (FFmpeg's libx264) through the pack's safe-file layer.

:func:`write_h264` encodes RGB frames as H.264 (``yuv420p``, so every browser and player decodes it) in an MP4
whose index sits at the front (``movflags=+faststart``, so a browser starts playing before the whole file has
arrived). The file is written to a temporary name of the pack's pattern ending in ``.mp4`` next to the target
and renamed over it when complete (``safe_files.atomic_write``): a crash never leaves half a video, and the
file gets the user's umask like any other file the pack writes.

PyAV (``pip install av``; its wheels carry FFmpeg with libx264) and numpy, through which PyAV takes pictures,
are imported only when a video is written, so the rest of the command line works without them.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import torch

from ..safe_files import WriteOutcome, atomic_write

CODEC = "libx264"
PIX_FMT = "yuv420p"
MAX_FPS = 240
INSTALL_HINT = "pip install av"


class VideoUnavailable(RuntimeError):
    """PyAV, or its H.264 encoder, is missing; the message says how to install it."""


def _pyav():
    """The ``av`` module, checked to have the libx264 encoder (PyAV takes pictures as numpy arrays)."""
    try:
        import numpy  # noqa: F401 (PyAV's VideoFrame.from_ndarray and Tensor.numpy need it)
    except ImportError:
        raise VideoUnavailable("writing a video needs numpy: pip install numpy") from None
    try:
        import av
    except ImportError:
        raise VideoUnavailable(f"writing an H.264 video needs PyAV: {INSTALL_HINT} (its wheels include FFmpeg "
                               "with libx264)") from None
    try:
        av.codec.Codec(CODEC, "w")
    except Exception:  # PyAV raises its own UnknownCodecError, whose base class changed across versions
        raise VideoUnavailable(f"this PyAV's FFmpeg has no {CODEC} encoder; install PyAV's own wheel, which has "
                               "it: pip install --force-reinstall av") from None
    return av


def check_h264() -> None:
    """Raise :class:`VideoUnavailable` now if :func:`write_h264` could not write a video (check before work)."""
    _pyav()


def even_frames(frames) -> torch.Tensor:
    """``frames`` (a tensor or a numpy array) as a contiguous uint8 CPU tensor ``[N, H, W, 3]``, an odd height or
    width padded by repeating the last row or column (yuv420p halves the colour resolution, so H.264 needs even
    sizes)."""
    try:
        video = torch.as_tensor(frames, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"expected uint8 RGB frames [N, H, W, 3], got {type(frames).__name__}") from None
    if video.dim() != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8:
        raise ValueError(f"expected uint8 RGB frames [N, H, W, 3], got {video.dtype} {list(video.shape)}")
    if not video.shape[0] or not video.shape[1] or not video.shape[2]:
        raise ValueError(f"no picture to write: frames of shape {list(video.shape)}")
    if video.shape[1] % 2:
        video = torch.cat([video, video[:, -1:]], dim=1)
    if video.shape[2] % 2:
        video = torch.cat([video, video[:, :, -1:]], dim=2)
    return video.contiguous()


def _encode(av, frames: torch.Tensor, target: Path, fps: Fraction, crf: int) -> None:
    container = av.open(os.fspath(target), mode="w", format="mp4", container_options={"movflags": "+faststart"})
    try:
        stream = container.add_stream(CODEC, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = PIX_FMT
        stream.options = {"crf": str(crf), "preset": "medium"}
        for picture in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture.numpy(), format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
    finally:
        container.close()


def write_h264(frames, path: str | os.PathLike, fps: float = 16, crf: int = 18) -> WriteOutcome:
    """Write uint8 RGB ``frames [N, H, W, 3]`` (a tensor or a numpy array) to ``path`` as an H.264 MP4 at ``fps``
    frames per second, atomically, with the user's umask.

    ``crf`` is x264's quality (0 lossless .. 51 worst; 18 looks lossless). Raises :class:`VideoUnavailable`
    when PyAV is missing and ``ValueError`` for frames or a frame rate it cannot write.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps must be a number in (0, {MAX_FPS}], got {fps!r}")
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
    array = even_frames(frames)
    av = _pyav()
    rate = Fraction(fps).limit_denominator(1001)
    return atomic_write(path, lambda tmp: _encode(av, array, tmp, rate, crf), keep_suffix=True)


MAX_READ_PIXELS = 4096 * 4096
"""The largest picture :func:`read_last_frames` decodes (a frame size, not a file size)."""


def read_last_frames(path: str | os.PathLike, count: int) -> torch.Tensor:
    """The last ``count`` frames (fewer when the video is shorter) of a video file as RGB uint8 ``[N, H, W, 3]``,
    decoded with PyAV; only ``count`` frames are ever held. ``ValueError`` says what is wrong."""
    import collections

    try:
        import av
    except ImportError:
        raise ValueError(f"reading a video needs PyAV: {INSTALL_HINT}") from None
    name = os.path.basename(os.fspath(path))
    if not os.path.isfile(path):
        raise ValueError(f"video file not found: {name}")
    kept: collections.deque = collections.deque(maxlen=max(1, count))
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{name} holds no video stream")
            codec = container.streams.video[0].codec_context
            if codec.width * codec.height > MAX_READ_PIXELS:
                raise ValueError(f"{name} is {codec.width}x{codec.height}, over the {MAX_READ_PIXELS >> 20} Mpx "
                                 "this reader decodes; downscale it first")
            for frame in container.decode(video=0):
                kept.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
    except av.FFmpegError as e:
        raise ValueError(f"{name} could not be read as a video ({type(e).__name__}: {e})") from None
    if not kept:
        raise ValueError(f"{name} holds no frame")
    return torch.stack(list(kept))
