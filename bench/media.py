"""Realistic benchmark media: a panning photo-like video (so decoding costs what a real one does)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from fixtures.generate import photo_like_image


def panning_video(path: Path, width: int, height: int, *, seconds: int = 10, fps: int = 25, gop_seconds: int = 2,
                  audio: bool = True) -> None:
    """H.264/AAC MP4 (faststart): a photo-like picture panning slowly, a keyframe every `gop_seconds`."""
    scene = photo_like_image(width + seconds * fps * 2, height, seed=7)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"g": str(gop_seconds * fps), "keyint_min": str(gop_seconds * fps), "sc_threshold": "0",
                         "preset": "veryfast", "crf": "23"}
        sound = out.add_stream("aac", rate=44100) if audio else None
        for index in range(seconds * fps):
            frame = av.VideoFrame.from_image(scene.crop((index * 2, 0, index * 2 + width, height)))
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples = 1024
            silence = bytes(samples * 2)
            for index in range(seconds * 44100 // samples):
                frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
                frame.planes[0].update(silence)
                frame.sample_rate = 44100
                frame.pts = index * samples
                frame.time_base = Fraction(1, 44100)
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)


def long_video(path: Path, *, minutes: float, width: int = 1280, height: int = 720, faststart: bool = False) -> int:
    """A long H.264/AAC MP4 made fast: a 10 s panning segment (keyframe every 2 s) repeated by packet copy.
    The index (moov) is at the end unless `faststart`, as a camera or an encoder writes it. Returns its size."""
    import subprocess

    from .harness import tool

    segment = path.with_name("segment.mp4")
    panning_video(segment, width, height, seconds=10)
    loops = max(1, round(minutes * 6))
    command = [tool("ffmpeg"), "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(segment), "-c", "copy"]
    command += ["-movflags", "+faststart"] if faststart else []
    subprocess.run([*command, str(path)], check=True)
    segment.unlink()
    return path.stat().st_size
