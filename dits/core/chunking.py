"""Content-defined chunking: profiles and a streaming, pure cut-point engine.

This module owns where files are cut into chunks. It is pure: bytes in, cut offsets out. It
never opens files, reads the clock or the environment; the read loop belongs to the caller
(``ops`` for ``dits add``, the speculative agent for files still being written).

Theory of operation
-------------------
A file is cut in one left-to-right pass. :class:`Chunker` keeps a position ``pos`` (the end of
the last chunk it returned) and, for each call, a *window* of the bytes known from ``pos`` on.
Three layers decide the cuts:

1. **Hard boundaries** come from the container layout, walked header by header from offset 0.
   The container kind is sniffed once from the first 512 bytes:

   * ISO-BMFF (MP4/MOV): top-level boxes, using size32, size 1 (64-bit largesize) and
     size 0 (box runs to end of file). A *big* box (at least ``min_size`` bytes, or size 0)
     gets a hard cut at its start, right after its header and at its end. Rewriting the
     header of ``mdat`` (ffmpeg writes size 0 while recording, then patches it; or turns
     ``wide`` + 32-bit ``mdat`` into a 64-bit header) therefore touches only a tiny header
     chunk, and a rewritten or moved ``moov`` touches only its own chunks. Small boxes
     (``ftyp``, ``free``, a small ``moov``) flow together under plain CDC: a hard cut per tiny
     box would only make tiny chunks, and a crafted file of 8-byte boxes would otherwise
     explode the chunk count.
   * tar (``ustar`` magic, valid header checksum): members whose data is at least
     ``min_size`` bytes get hard cuts at the start of their header (including a preceding
     pax/GNU long-name header chain), at the start of their data and at the end of their
     padded data. Small members flow together under CDC, for the same reason.
   * anything else: no hard boundaries.

   A header that fails validation (impossible size, bad checksum, truncated) ends the walk:
   the rest of the file is one plain CDC region. Nothing here ever raises on file content.
   The walk never needs data that comes later in the file (an MP4 ``moov`` at the end, a tar
   end-of-archive block): every boundary depends only on headers at or before it.

2. **CDC inside each region** between two hard boundaries: pyfastcdc's compiled FastCDC
   (gear hash, normalization level 1, seed 0), run over zero-copy memoryview slices. A cut
   at chunk start ``s`` depends only on bytes ``[s, min(s + max_size, region_end))``.

3. **ProRes frame snapping** inside QuickTime ``mdat`` payloads and in raw ProRes streams (a
   file that starts with a frame). ProRes frames are self-delimiting: a 4-byte big-endian
   frame size, then ``icpf``. A frame start is a position with ``icpf`` four bytes on and a
   plausible size (8 bytes to 64 MiB). Frame starts are found by one left-to-right scan
   (``re`` over the memoryview, in C) that jumps over each frame's payload, so ProRes
   video is hardly scanned at all and stray ``icpf`` bytes inside a frame are ignored. Each
   CDC cut is moved to the nearest frame start in ``[s + min_size, s + max_size]`` (the
   region end counts as one when in reach; the CDC cut is kept if there is none), so chunks
   are whole frames and an edit of a few frames re-stores about those frames. Snapping is
   gated by the container (a ``qt`` brand or no ``ftyp``; a raw stream starting with a
   frame) so that other media and random data run at full CDC speed.

Streaming and purity rule
-------------------------
A chunk starting at ``s`` in a region ending at ``e`` is decided from bytes
``[s, min(e, s + max_size + 8))`` plus the headers that fix ``e``. :meth:`Chunker.cuts`
decides every chunk whose bytes are in the window (or everything, at end of file) and keeps
the rest for the next call, so any split of a file into successive windows yields exactly the
cuts of one call over the whole file. A window holding :attr:`Chunker.lookahead` bytes past its
start always decides at least one chunk. Between calls the Chunker keeps only small state:
the container walker's next header offset, the hard boundaries found ahead of ``pos``, and
the frame scanner's position and the frame starts it found ahead of ``pos``.

Profiles are part of the persisted format: every manifest records the profile name, and a
profile is never changed in place. New parameters get a new name in :data:`PROFILES`; old
names stay so old manifests keep their meaning. The pinned algorithm (pyfastcdc 0.3 gear
table, seed 0, normalization 1, the container rules above) is part of every profile's meaning.

This module is longer than one concept usually gets, because the container walkers and the
snapping scanner are private parts of the one cut-point rule and must change together.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Final

from pyfastcdc import FastCDC

__all__ = [
    "MEDIA_PROFILE",
    "MEDIA_PROFILE_V1",
    "PROFILES",
    "PROJECT_PROFILE",
    "Chunker",
    "ChunkingProfile",
    "choose_profile",
    "cut_points",
    "profile_by_name",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB

# pyfastcdc 0.3 accepts these bounds (FastCDC.__init__ raises outside them).
_CDC_MIN_RANGE: Final = (64, 1 * MiB)
_CDC_AVG_RANGE: Final = (256, 4 * MiB)
_CDC_MAX_RANGE: Final = (1 * KiB, 16 * MiB)

_UNBOUNDED: Final = 1 << 62  # "no region end known": larger than any file offset
_SNIFF_LEN: Final = 512  # bytes needed to recognise a container (one tar header block)

_FRAME_MAGIC: Final = b"icpf"
_FRAME_RE: Final = re.compile(re.escape(_FRAME_MAGIC))
_FRAME_MIN: Final = 8
_FRAME_MAX: Final = 64 * MiB
_FRAME_HEAD: Final = 8  # size field + magic: bytes a frame start needs to be recognised

_BOX_TYPES: Final = frozenset(
    {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"moof"}
    | {b"sidx", b"uuid", b"junk", b"pdin", b"meta"}
)
_QT_BRAND: Final = b"qt  "
_FTYP_SCAN: Final = 256  # brands beyond this many bytes of ftyp are not looked at

_TAR_BLOCK: Final = 512
_TAR_EXT_TYPES: Final = frozenset(b"xgLK")  # pax extended/global, GNU long name/link
_TAR_NO_DATA_TYPES: Final = frozenset(b"123456")  # links, devices, dirs, fifos: size ignored
_TAR_CHAIN_SPAN: Final = 8 * KiB  # longest extension-header chain grouped with its member
_PAX_SIZE_RE: Final = re.compile(rb"(?:\A|\n)\d+ size=(\d+)\n")
_ZERO_BLOCK: Final = bytes(_TAR_BLOCK)

# Bytes past a chunk start that a decision may need beyond max_size: the frame-start header
# (8), then the deepest container header read while proving no boundary lies closer
# (a tar header chain: 8 KiB + one block). Rounded up.
_SLACK: Final = 16 * KiB
assert _FRAME_HEAD + _TAR_CHAIN_SPAN + _TAR_BLOCK <= _SLACK


@dataclass(frozen=True)
class ChunkingProfile:
    """Named chunk-size bounds; the name is recorded in every manifest.

    A name always means the same parameters: never change a shipped profile, add a new name.

    Attributes:
        name: Identifier recorded in manifests, e.g. ``"media-v1"``.
        min_size: No CDC cut closer than this to the chunk start (even, so FastCDC honours it).
        avg_size: FastCDC's normalization target.
        max_size: Hard upper bound of every chunk.
        container_aware: Honour ISO-BMFF box, tar member and ProRes frame boundaries.
        frame_gap_limit: Stop ProRes frame snapping for the rest of a region once this many
            bytes past the end of the last frame found (or past the region start) held no
            frame start: the region is not a frame stream (H.264 or HEVC in a QuickTime
            ``mdat``), and scanning it for frames would cost more than cutting it. 0: never
            stop (``media-v1``).

    Raises:
        ValueError: The sizes are outside pyfastcdc's bounds or not ordered.
    """

    name: str
    min_size: int
    avg_size: int
    max_size: int
    container_aware: bool
    frame_gap_limit: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a chunking profile needs a name")
        for label, value, (low, high) in (
            ("min_size", self.min_size, _CDC_MIN_RANGE),
            ("avg_size", self.avg_size, _CDC_AVG_RANGE),
            ("max_size", self.max_size, _CDC_MAX_RANGE),
        ):
            if not low <= value <= high:
                raise ValueError(f"{label} {value} outside [{low}, {high}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError("chunk sizes must satisfy min_size <= avg_size <= max_size")
        if self.min_size % 2:
            raise ValueError("min_size must be even (FastCDC steps two bytes at a time)")
        if self.frame_gap_limit < 0:
            raise ValueError("frame_gap_limit must be 0 (never) or positive")


MEDIA_PROFILE_V1: Final = ChunkingProfile(
    name="media-v1", min_size=64 * KiB, avg_size=256 * KiB, max_size=1 * MiB, container_aware=True
)
"""The first media profile: as ``media-v2`` but it scans every QuickTime ``mdat`` byte for
ProRes frames, which made H.264/HEVC ``.mov`` files cut at ~1.5 GB/s. Kept so manifests that
name it keep their meaning."""

MEDIA_PROFILE: Final = ChunkingProfile(
    name="media-v2",
    min_size=64 * KiB,
    avg_size=256 * KiB,
    max_size=1 * MiB,
    container_aware=True,
    frame_gap_limit=16 * MiB,
)
"""Video, audio, image sequences, archives and anything of 4 MiB or more: ~315 KiB mean
chunks, container-aware (see docs/chunking.md for the measurements behind the sizes). A
QuickTime region with no ProRes frame in 16 MiB is cut by plain CDC from there on: larger than
any gap audio interleaving leaves between frames, small against a real file."""

PROJECT_PROFILE: Final = ChunkingProfile(
    name="project-v1",
    min_size=4 * KiB,
    avg_size=16 * KiB,
    max_size=64 * KiB,
    container_aware=False,
)
"""Project, text and other files under 4 MiB: ~20 KiB mean chunks, so a small edit re-stores
tens of KiB, while a 4 MiB file still has only about 200 chunks (docs/chunking.md)."""

PROFILES: Final[dict[str, ChunkingProfile]] = {
    p.name: p for p in (MEDIA_PROFILE_V1, MEDIA_PROFILE, PROJECT_PROFILE)
}
"""Every profile ever shipped, by name. Entries are only ever added."""

_MEDIA_SIZE: Final = 4 * MiB
_MEDIA_EXTENSIONS: Final = frozenset(
    # video and camera raw
    {"mov", "mp4", "m4v", "mxf", "braw", "r3d", "ari", "arx", "crm", "mkv", "webm", "avi"}
    | {"mts", "m2ts", "ts", "mpg", "mpeg", "3gp", "dv", "prores"}
    # audio
    | {"wav", "bwf", "aif", "aiff", "aifc", "mp3", "m4a", "aac", "flac", "ogg", "opus", "caf"}
    # stills and image sequences
    | {"dpx", "exr", "cin", "tif", "tiff", "png", "jpg", "jpeg", "heic", "dng", "cr2", "cr3"}
    | {"nef", "arw", "psd", "psb", "tga", "bmp"}
    # archives of the above
    | {"tar"}
)


def profile_by_name(name: str) -> ChunkingProfile:
    """Return the shipped profile called ``name``.

    Raises:
        ValueError: No profile has that name (a manifest from a newer dits, or corruption).
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown chunking profile {name!r}") from None


def choose_profile(file_name: str, size: int) -> ChunkingProfile:
    """Pick the profile for a new file from its name and size alone.

    Args:
        file_name: Base name or path; only the extension (case-insensitive) is used.
        size: File size in bytes.

    Returns:
        :data:`MEDIA_PROFILE` for media/archive extensions or files of 4 MiB and more,
        else :data:`PROJECT_PROFILE`.
    """
    base = file_name.replace("\\", "/").rpartition("/")[2]
    stem, dot, ext = base.rpartition(".")
    if size >= _MEDIA_SIZE or (dot and stem and ext.lower() in _MEDIA_EXTENSIONS):
        return MEDIA_PROFILE
    return PROJECT_PROFILE


# --------------------------------------------------------------------------- container layout


class _Layout:
    """Hard boundaries found so far, and how far that knowledge reaches.

    ``bounds`` holds ``(offset, snap)`` pairs in ascending order, ``snap`` telling whether
    ProRes snapping applies in the region starting there. Every hard boundary below
    ``horizon`` has been emitted. The base class is the layout of a plain stream.
    """

    def __init__(self) -> None:
        self.bounds: deque[tuple[int, bool]] = deque()
        self.horizon = _UNBOUNDED
        self.done = True

    def advance(self, view: memoryview, base: int, eof: bool) -> None:
        """Parse every header the window ``view`` (file offset ``base``) allows."""

    def _emit(self, offset: int, snap: bool) -> None:
        if self.bounds and self.bounds[-1][0] == offset:
            self.bounds[-1] = (offset, snap)  # same offset from box end and next box start
        else:
            self.bounds.append((offset, snap))

    def _finish(self) -> None:
        self.done = True
        self.horizon = _UNBOUNDED


class _BmffLayout(_Layout):
    """Top-level ISO-BMFF boxes; QuickTime ``mdat`` payloads get ProRes snapping."""

    def __init__(self, min_size: int, quicktime: bool) -> None:
        super().__init__()
        self.done = False
        self.horizon = 0
        self._big = min_size
        self._quicktime = quicktime

    def advance(self, view: memoryview, base: int, eof: bool) -> None:
        end = base + len(view)
        while not self.done:
            h = self.horizon  # next box start; every boundary before it is known
            header = _box_header(view, h - base, end - h)
            if header is None:  # needs bytes past the window
                if eof:
                    self._finish()  # truncated: plain CDC to the end
                return
            if not header:
                self._finish()  # garbage: plain CDC from the last good box on
                return
            box_type, head_len, size = header
            if size == 0 or size >= self._big:
                self._emit(h, False)
                if size == 0 or head_len < size:
                    self._emit(h + head_len, self._quicktime and box_type == b"mdat")
                if size == 0:
                    self._finish()  # box runs to the end of the file
                    return
                self._emit(h + size, False)
            self.horizon = h + size


def _box_header(view: memoryview, at: int, avail: int) -> tuple[bytes, int, int] | tuple[()] | None:
    """Parse a box header at ``view[at:]``: ``(type, header length, size or 0)``.

    Returns ``()`` for an invalid header and ``None`` when more than ``avail`` bytes are needed.
    """
    if avail < 8:
        return None
    head = bytes(view[at : at + 8])
    size = int.from_bytes(head[:4], "big")
    box_type = head[4:]
    if not all(0x20 <= c <= 0x7E for c in box_type):
        return ()
    if size == 1:
        if avail < 16:
            return None
        size = int.from_bytes(view[at + 8 : at + 16], "big")
        return (box_type, 16, size) if size >= 16 else ()
    if size == 0:
        return (box_type, 8, 0)
    return (box_type, 8, size) if size >= 8 else ()


class _TarLayout(_Layout):
    """tar members (ustar/GNU/pax headers, checksum-validated); big members are isolated."""

    def __init__(self, min_size: int) -> None:
        super().__init__()
        self.done = False
        self.horizon = 0
        self._big = min_size

    def advance(self, view: memoryview, base: int, eof: bool) -> None:
        while not self.done:
            step = self._member(view, base)
            if step is None:  # needs bytes past the window
                if eof:
                    self._finish()
                return
            if step < 0:
                self._finish()  # end-of-archive block or garbage: plain CDC from here on
                return
            self.horizon = step

    def _member(self, view: memoryview, base: int) -> int | None:
        """Walk one member (with its extension headers) at ``horizon``.

        Returns the next header offset, ``-1`` to stop walking, or ``None`` when more bytes
        are needed. Emits the member's boundaries when it is big.
        """
        start = at = self.horizon
        end = base + len(view)
        header = _tar_header(view, at - base, end - at)
        if header is None or not header:
            return None if header is None else -1
        type_flag, size = header
        pax_size: int | None = None
        while type_flag in _TAR_EXT_TYPES:
            data_at = at + _TAR_BLOCK
            nxt = data_at + _tar_padded(size)
            if nxt + _TAR_BLOCK - start > _TAR_CHAIN_SPAN:
                if at == start:  # a huge extension header: walk it as a member of its own
                    return nxt
                break  # chain too long to group: the member starts at this header
            if nxt + _TAR_BLOCK > end:
                return None
            if type_flag == ord("x"):
                found = _PAX_SIZE_RE.search(bytes(view[data_at - base : data_at - base + size]))
                pax_size = int(found.group(1)) if found else pax_size
            at = nxt
            header = _tar_header(view, at - base, end - at)
            if not header:
                return -1  # None cannot happen: the block is in the window
            type_flag, size = header
        if type_flag in _TAR_EXT_TYPES:  # chain cut short above: walk from its last header
            return at
        if pax_size is not None:
            size = pax_size
        data_at = at + _TAR_BLOCK
        data_len = 0 if type_flag in _TAR_NO_DATA_TYPES else size
        nxt = data_at + _tar_padded(data_len)
        if data_len >= self._big:
            self._emit(start, False)
            self._emit(data_at, False)
            self._emit(nxt, False)
        return nxt


def _tar_padded(size: int) -> int:
    return -(-size // _TAR_BLOCK) * _TAR_BLOCK


def _tar_header(view: memoryview, at: int, avail: int) -> tuple[int, int] | tuple[()] | None:
    """Validate the tar header block at ``view[at:]``: ``(type flag, size)``.

    Returns ``()`` for an all-zero or invalid block, ``None`` when the block is not in view.
    """
    if avail < _TAR_BLOCK:
        return None
    raw = bytes(view[at : at + _TAR_BLOCK])
    if raw == _ZERO_BLOCK:
        return ()
    stored = _tar_number(raw[148:156])
    unsigned = sum(raw) - sum(raw[148:156]) + 8 * 0x20
    high = len(raw.translate(None, bytes(range(0x80))))  # bytes that sign-extend
    if stored is None or stored not in (unsigned, unsigned - 256 * high):
        return ()
    size = _tar_number(raw[124:136])
    if size is None:
        return ()
    return raw[156], size


def _tar_number(field: bytes) -> int | None:
    """Octal (NUL/space padded) or GNU base-256 number; ``None`` if malformed or negative."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") if field[0] == 0x80 else None
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def _sniff(view: memoryview, profile: ChunkingProfile) -> tuple[_Layout, bool]:
    """Recognise the container from the first bytes: its layout and the first region's snap."""
    if not profile.container_aware:
        return _Layout(), False
    head = bytes(view[:_SNIFF_LEN])
    if len(head) >= _TAR_BLOCK and head[257:262] == b"ustar" and _tar_header(view, 0, len(head)):
        return _TarLayout(profile.min_size), False
    box = _box_header(view, 0, len(view))
    if box and box[0] in _BOX_TYPES:
        box_type, _, size = box
        quicktime = True  # classic QuickTime files may start without ftyp
        if box_type == b"ftyp":
            brands = head[8 : min(size or len(head), _FTYP_SCAN)]
            quicktime = any(brands[i : i + 4] == _QT_BRAND for i in range(0, len(brands), 4))
        return _BmffLayout(profile.min_size, quicktime), False
    return _Layout(), _frame_size(head, 0) is not None


def _frame_size(buf: bytes | memoryview, at: int) -> int | None:
    """Size of the ProRes frame starting at ``buf[at]``, if that is a plausible frame start."""
    if bytes(buf[at + 4 : at + 8]) != _FRAME_MAGIC:
        return None
    size = int.from_bytes(buf[at : at + 4], "big")
    return size if _FRAME_MIN <= size <= _FRAME_MAX else None


class _FrameScanner:
    """ProRes frame starts in one region, found left to right, jumping over frame payloads.

    Every frame start below ``next_at`` is in ``frames``. ``last_end`` is the end of the last
    frame found (the region start before any). The result is a function of the region's bytes
    alone, however the scan is split across calls.
    """

    __slots__ = ("frames", "last_end", "next_at")

    def __init__(self, start: int) -> None:
        self.frames: list[int] = []
        self.next_at = start
        self.last_end = start

    def scan(self, view: memoryview, base: int, upto: int, region_end: int) -> None:
        """Find every frame start ``p <= upto`` with ``p + 8 <= region_end``.

        The window must hold bytes up to ``min(upto + 8, region_end)``.
        """
        stop = min(upto + _FRAME_HEAD, region_end)
        at = self.next_at
        while at <= upto and at + _FRAME_HEAD <= stop:
            found = _FRAME_RE.search(view, at + 4 - base, stop - base)
            if found is None:
                at = stop - _FRAME_HEAD + 1
                break
            p = found.start() - 4 + base
            size = int.from_bytes(view[p - base : p - base + 4], "big")
            if _FRAME_MIN <= size <= _FRAME_MAX:
                self.frames.append(p)
                at = p + size  # stray magic inside a frame's payload is not a frame start
                self.last_end = max(self.last_end, at)
            else:
                at = p + 1
        self.next_at = max(at, self.next_at)

    def nearest(self, target: int, low: int, high: int) -> int | None:
        """The frame start in ``[low, high]`` closest to ``target`` (earlier one on ties)."""
        frames = self.frames
        i = bisect_left(frames, target)
        before = frames[i - 1] if i and frames[i - 1] >= low else None
        after = frames[i] if i < len(frames) and frames[i] <= high else None
        if before is None or (after is not None and after - target < target - before):
            return after
        return before

    def forget_before(self, offset: int) -> None:
        i = bisect_left(self.frames, offset)
        if i:
            del self.frames[:i]


# --------------------------------------------------------------------------- the chunker


class Chunker:
    """Streaming cut-point engine for one file under one profile.

    Feed successive windows of the file to :meth:`cuts`; each starts where the last returned
    chunk ended. Create a new Chunker per file.

    Args:
        profile: The chunk-size bounds and whether container boundaries are honoured.
    """

    def __init__(self, profile: ChunkingProfile) -> None:
        self._profile = profile
        self._cdc = FastCDC(
            profile.avg_size,
            min_size=profile.min_size,
            max_size=profile.max_size,
            normalized_chunking=1,
            seed=0,
        )
        self._pos = 0
        self._finished = False
        self._layout: _Layout | None = None
        self._scanner: _FrameScanner | None = None  # set while in a ProRes snapping region
        # Set while a snapping region is dormant (frame gap limit): where to look again.
        self._probe_at: int | None = None

    @property
    def profile(self) -> ChunkingProfile:
        """The profile this chunker cuts with."""
        return self._profile

    @property
    def lookahead(self) -> int:
        """Bytes past ``window_start`` a non-final window must hold to be sure of progress."""
        return self._profile.max_size + _SLACK

    @property
    def position(self) -> int:
        """End of the last chunk returned so far: the ``window_start`` of the next call."""
        return self._pos

    def cuts(self, window: memoryview, window_start: int, eof: bool) -> list[int]:
        """Return the end offsets of every chunk that can be decided now.

        Args:
            window: File bytes ``[window_start, window_start + len(window))``, zero-copy.
            window_start: 0 on the first call, then the last offset returned so far.
            eof: The window reaches the end of the file; everything is cut.

        Returns:
            Absolute chunk end offsets, ascending. With ``eof`` the last one is the file size
            (an empty file gives ``[]``). May be ``[]`` when not ``eof`` and the window holds
            fewer than :attr:`lookahead` bytes.

        Raises:
            ValueError: ``window_start`` is not the last returned offset, or the file was
                already finished.
        """
        if self._finished:
            raise ValueError("this chunker already reached the end of its file")
        if window_start != self._pos:
            raise ValueError(f"window starts at {window_start}, expected {self._pos}")
        view = memoryview(window)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        if self._layout is None:
            if not eof and len(view) < _SNIFF_LEN:
                return []
            self._layout, snap = _sniff(view, self._profile)
            self._scanner = _FrameScanner(0) if snap else None
        out: list[int] = []
        self._layout.advance(view, window_start, eof)
        self._pos = self._cut(view, window_start, eof, out)
        if eof:
            self._finished = True
        return out

    def _cut(self, view: memoryview, base: int, eof: bool, out: list[int]) -> int:
        """Append decided cuts to ``out``; return the new position."""
        assert self._layout is not None
        layout = self._layout
        bounds = layout.bounds
        end = base + len(view)
        max_size = self._profile.max_size
        t = self._pos
        while t < end:
            while bounds and bounds[0][0] <= t:  # entering the region that starts at t
                _, snap = bounds.popleft()
                self._scanner = _FrameScanner(t) if snap else None
                self._probe_at = None
            next_bound = bounds[0][0] if bounds else _UNBOUNDED
            reach = t + max_size + _FRAME_HEAD  # bytes a decision at t may look at
            if next_bound > reach and not eof and layout.horizon <= reach:
                break  # a boundary may still turn up within reach
            region_end = min(next_bound, end) if eof else next_bound
            if not eof and end < min(region_end, reach):
                break
            scanner = self._scanner
            gap_limit = self._profile.frame_gap_limit
            if scanner is not None and gap_limit and t - scanner.last_end >= gap_limit:
                # No frame for gap_limit bytes: the region goes dormant (plain CDC) and is
                # probed again every gap_limit bytes. ``last_end`` covers every frame start up
                # to the previous chunk's snapping reach, a function of the cut sequence
                # alone, so this is too.
                self._scanner = scanner = None
                self._probe_at = t + gap_limit
            elif scanner is None and self._probe_at is not None and t >= self._probe_at:
                # A probe: the frame scan snapping at t would do, and only that (at most
                # max_size bytes). A frame start in it wakes the region up with exactly the
                # scanner state that scan leaves; none: look again gap_limit bytes on.
                probe = _FrameScanner(t)
                probe.scan(view, base, min(t + max_size, region_end - _FRAME_HEAD), region_end)
                if probe.frames:
                    self._scanner = scanner = probe
                    self._probe_at = None
                else:
                    self._probe_at = t + gap_limit
            if scanner is None:
                moved = self._cut_region(
                    view, base, t, region_end, layout.horizon, out, self._probe_at
                )
                if moved == t:
                    break  # cannot happen: the checks above promise one decidable chunk
                t = moved
                continue
            cut = t + self._first_cut(view[t - base : min(region_end, t + max_size) - base])
            if cut < region_end:
                cut = self._snap(view, base, scanner, t, cut, region_end)
            out.append(cut)
            t = cut
        return t

    def _snap(
        self,
        view: memoryview,
        base: int,
        scanner: _FrameScanner,
        t: int,
        cut: int,
        region_end: int,
    ) -> int:
        """Move the CDC ``cut`` of the chunk at ``t`` to the nearest frame start in reach.

        The region end counts as a frame start when it is in reach, so the last frame of a
        region is not split either.
        """
        low = t + self._profile.min_size
        high = min(t + self._profile.max_size, region_end - _FRAME_HEAD)
        best: int | None = None
        if low <= high:
            # Frames before t cannot be candidates any more. Starting the scan no earlier
            # than t is itself a function of the (deterministic) cut sequence.
            scanner.next_at = max(scanner.next_at, t)
            scanner.scan(view, base, high, region_end)
            best = scanner.nearest(cut, low, high)
        if region_end <= t + self._profile.max_size and (
            best is None or region_end - cut < abs(best - cut)
        ):
            best = region_end
        cut = cut if best is None else best
        scanner.forget_before(cut)
        return cut

    def _cut_region(
        self,
        view: memoryview,
        base: int,
        t: int,
        region_end: int,
        horizon: int,
        out: list[int],
        stop_at: int | None = None,
    ) -> int:
        """Plain CDC from ``t`` in one pass over the region's bytes in the window.

        All chunks are final when the region ends inside the window; otherwise only those
        starting early enough to see ``max_size + 8`` bytes and no unknown boundary. No
        chunk starting at or past ``stop_at`` (a dormant region's next probe) is cut.
        """
        end = base + len(view)
        stop = min(region_end, end)
        if region_end <= end:
            last_start = stop
        else:
            last_start = min(end, horizon - 1) - self._profile.max_size - _FRAME_HEAD
        for chunk in self._cdc.cut_buf(view[t - base : stop - base]):
            if t > last_start or (stop_at is not None and t >= stop_at):
                break
            t += chunk.length
            out.append(t)
        return t

    def _first_cut(self, region: memoryview) -> int:
        for chunk in self._cdc.cut_buf(region):
            return int(chunk.length)
        raise AssertionError("empty region")  # callers pass at least one byte


def cut_points(data: bytes | memoryview, profile: ChunkingProfile) -> list[int]:
    """Cut a whole file in one call: ``Chunker(profile).cuts(memoryview(data), 0, True)``.

    Args:
        data: The complete file contents.
        profile: Chunking profile.

    Returns:
        Ascending chunk end offsets; the last equals ``len(data)``; ``[]`` for empty data.
    """
    return Chunker(profile).cuts(memoryview(data), 0, True)
