"""Clips by index rewrite, one entry point for both containers: read_clip_index(source, size) → an Mp4Index or
an FlvIndex (sniffed from the first bytes), each with .snap(start, end) → window and .layout(window) → Layout;
iter_clip_bytes(layout, source, first, last) produces any byte range of the virtual clip file.

NotIndexable (a subclass of Unprocessable) means: fall back to video.cut_clip (the packet-copy remux).
"""

from __future__ import annotations

from typing import BinaryIO, Union

from .clipparts import (FlvTags, Layout, Literal, NotIndexable, SourceRange, iter_clip_bytes, layout_from_blob,
                        layout_to_blob, part_bytes)
from .flvclip import FlvIndex, FlvWindow, read_flv_index
from .mp4clip import MAX_MOOV, Mp4Index, Mp4Window, read_mp4_index
from .clipparts import read_at

ClipIndex = Union[Mp4Index, FlvIndex]

__all__ = ["ClipIndex", "FlvIndex", "FlvTags", "FlvWindow", "Layout", "Literal", "Mp4Index", "Mp4Window",
           "NotIndexable", "SourceRange", "iter_clip_bytes", "layout_from_blob", "layout_to_blob", "part_bytes",
           "read_clip_index", "read_flv_index", "read_mp4_index"]


def read_clip_index(source: BinaryIO, size: int, max_moov: int = MAX_MOOV) -> ClipIndex:
    """The index of an FLV (it starts with "FLV") or of an MP4 / MOV (anything else is tried as one)."""
    if read_at(source, 0, 3) == b"FLV":
        return read_flv_index(source, size)
    return read_mp4_index(source, size, max_moov=max_moov)
