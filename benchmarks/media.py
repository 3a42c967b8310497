"""Benchmark media: genuine ProRes and H.264 files made by ffmpeg from its test sources.

Each *pair* is an old and a new version of the same file, made the way an editor makes them:
the same timeline exported twice with the same encoder settings, a few seconds changed in the
second export (a box drawn over seconds 10-13), or the same export re-muxed. Files are cached
under a data directory keyed by their parameters, so a second run does not encode again.

Needs the ``ffmpeg`` and ``ffprobe`` programs (``apt-get install -y ffmpeg``). Not used by
tests; the unit tests build their containers by hand.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FULL",
    "QUICK",
    "MediaPair",
    "MediaSpec",
    "ensure_media",
    "packet_spans",
    "project_file",
]


@dataclass(frozen=True)
class MediaSpec:
    """The timeline: test pattern size, length, frame rate and the edited seconds."""

    width: int
    height: int
    seconds: int
    fps: int = 25
    edit_from: int = 10
    edit_to: int = 13

    @property
    def tag(self) -> str:
        return f"{self.width}x{self.height}-{self.seconds}s"


FULL = MediaSpec(1280, 720, 40)
"""ProRes 422 files of ~160 MB each; about 3 minutes of encoding on 2 cores."""

QUICK = MediaSpec(640, 360, 20)
"""Smaller and shorter, for a smoke run in well under a minute."""


@dataclass(frozen=True)
class MediaPair:
    """Two versions of one file and what differs between them."""

    name: str
    old: Path
    new: Path
    note: str


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install it (apt-get install -y ffmpeg)")
    return path


def _ffmpeg(args: list[str]) -> None:
    cmd = [_tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    subprocess.run(cmd, check=True)


def _atomic(out: Path) -> Path:
    """Temporary name next to ``out`` keeping its extension (ffmpeg picks the muxer by it)."""
    return out.with_name(f".{out.stem}.part{out.suffix}")


def _export(out: Path, spec: MediaSpec, edited: bool, codec_args: list[str]) -> Path:
    """Render the test timeline; ``edited`` draws a box over the edited seconds only."""
    if out.exists():
        return out
    enable = f"between(t,{spec.edit_from},{spec.edit_to})" if edited else "0"
    box = f"drawbox=x=iw/8:y=ih/6:w=iw/3:h=ih/3:color=red@0.7:t=fill:enable='{enable}'"
    video = f"testsrc2=size={spec.width}x{spec.height}:rate={spec.fps}:duration={spec.seconds}"
    audio = f"sine=frequency=440:beep_factor=4:sample_rate=48000:duration={spec.seconds}"
    tmp = _atomic(out)
    sources = ["-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio]
    _ffmpeg([*sources, "-vf", box, "-ac", "2", *codec_args, str(tmp)])
    tmp.rename(out)
    return out


def _remux(src: Path, out: Path, args: list[str]) -> Path:
    """Copy the streams into a new container (no re-encode), e.g. to move or retag moov."""
    if out.exists():
        return out
    tmp = _atomic(out)
    _ffmpeg(["-i", str(src), "-map", "0", "-c", "copy", *args, str(tmp)])
    tmp.rename(out)
    return out


def project_file(version: int, clips: int = 6000) -> bytes:
    """A deterministic NLE-project-like XML document (~2 MB); ``version`` 2 has small edits.

    Version 2 trims three clips in different parts of the timeline and inserts one clip, as
    a short editing session would.
    """
    rng = random.Random(7)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<project name="bench" fps="25">']
    for i in range(clips):
        start, length = rng.randrange(0, 90_000), rng.randrange(25, 500)
        if version == 2 and i in (1000, 3000, 5000):
            length += 12
        clip_id = rng.getrandbits(64)
        lines.append(
            f'  <clip id="{clip_id:016x}" track="{i % 4}" src="A{i % 97:03d}_C{i:05d}.mov" '
            f'in="{start}" out="{start + length}" gain="{rng.uniform(-6, 6):.2f}"/>'
        )
        if version == 2 and i == 4000:
            lines.append('  <clip id="feedfacefeedface" track="1" src="B001.mov" in="0" out="50"/>')
    lines.append("</project>")
    return ("\n".join(lines) + "\n").encode()


def _tar(out: Path, members: list[tuple[str, Path | bytes]]) -> Path:
    """A tar archive (pax format, fixed metadata) of files and generated contents."""
    if out.exists():
        return out
    tmp = _atomic(out)
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if isinstance(content, Path):
                info.size = content.stat().st_size
                with content.open("rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    tmp.rename(out)
    return out


def ensure_media(data_dir: Path, spec: MediaSpec) -> list[MediaPair]:
    """Generate (or reuse from ``data_dir``) every benchmark pair for ``spec``.

    Returns:
        The pairs, old and new file each.

    Raises:
        RuntimeError: ffmpeg is not installed.
        subprocess.CalledProcessError: ffmpeg failed.
    """
    data_dir.mkdir(parents=True, exist_ok=True)

    def path(stem: str, ext: str) -> Path:
        return data_dir / f"{stem}-{spec.tag}.{ext}"

    prores = ["-c:v", "prores_ks", "-profile:v", "2", "-c:a", "pcm_s16le"]
    h264 = ["-c:v", "libx264", "-preset", "fast", "-crf", "18", "-g", "48", "-pix_fmt", "yuv420p"]
    h264 += ["-c:a", "aac", "-b:a", "192k"]
    mov1 = _export(path("prores-v1", "mov"), spec, False, prores)
    mov2 = _export(path("prores-v2", "mov"), spec, True, prores)
    mp41 = _export(path("h264-v1", "mp4"), spec, False, h264)
    mp42 = _export(path("h264-v2", "mp4"), spec, True, h264)
    fast = ["-movflags", "+faststart"]
    fs1 = _remux(mp41, path("h264-faststart-v1", "mp4"), fast)
    fs2 = _remux(mp42, path("h264-faststart-v2", "mp4"), fast)
    retag = ["-metadata", "title=Reel 1 - approved", "-metadata", "comment=" + "notes " * 200]
    mov1_retag = _remux(mov1, path("prores-v1-retagged", "mov"), retag)
    tar1 = _tar(
        path("card-v1", "tar"), [("card/clip.mov", mov1), ("card/edit.xml", project_file(1))]
    )
    tar2 = _tar(
        path("card-v2", "tar"), [("card/clip.mov", mov2), ("card/edit.xml", project_file(2))]
    )
    edit = f"box drawn over seconds {spec.edit_from}-{spec.edit_to}"
    return [
        MediaPair("prores-mov", mov1, mov2, f"ProRes 422 .mov, re-export, {edit}"),
        MediaPair("h264-mp4", mp41, mp42, f"H.264 .mp4 (moov at end), re-export, {edit}"),
        MediaPair("h264-mp4-faststart", fs1, fs2, f"H.264 .mp4 +faststart, re-export, {edit}"),
        MediaPair("prores-retag", mov1, mov1_retag, "same ProRes .mov re-muxed with new metadata"),
        MediaPair("h264-moov-moved", mp41, fs1, "same H.264 .mp4 re-muxed with +faststart"),
        MediaPair("tar-prores", tar1, tar2, f"tar of ProRes .mov + project XML, {edit}"),
    ]


def packet_spans(path: Path) -> list[tuple[int, int]]:
    """``(offset, size)`` of every audio/video packet in the file, from ffprobe.

    Used as a yardstick: a chunker that cut exactly at packet boundaries would re-store
    only the packets that changed (plus the container metadata).
    """
    cmd = [_tool("ffprobe"), "-v", "error", "-show_entries", "packet=pos,size", "-of", "csv=p=0"]
    text = subprocess.run([*cmd, str(path)], check=True, capture_output=True, text=True).stdout
    spans = []
    for line in text.splitlines():
        fields = line.strip().strip(",").split(",")
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            size, pos = int(fields[0]), int(fields[1])  # ffprobe prints size before pos
            spans.append((pos, size))
    return sorted(spans)
