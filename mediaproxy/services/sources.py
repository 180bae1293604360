"""An entry's file together with what it really is: the starting point of every service."""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache

from ..media.probe import MediaInfo, probe
from ..media.video import VideoInfo, probe_video
from ..origins.base import Original
from ..origins.store import OriginalStore
from ..refs import EntryRef, FileSelector
from ..workpool import WorkPool


@dataclass(frozen=True)
class Source:
    original: Original
    media: MediaInfo


class Sources:
    def __init__(self, store: OriginalStore, pool: WorkPool) -> None:
        self.store = store
        self.pool = pool
        self._probed: LRUCache[str, MediaInfo] = LRUCache(maxsize=50_000)  # by original identity
        self._videos: LRUCache[str, VideoInfo] = LRUCache(maxsize=50_000)

    async def get(self, ref: EntryRef, selector: FileSelector = FileSelector()) -> Source:
        original = await self.store.get(ref, selector)
        media = self._probed.get(original.identity)
        if media is None:
            media = await self.pool.run(probe, original.path, original.file_name)
            self._probed[original.identity] = media
        return Source(original, media)

    async def video_info(self, source: Source) -> VideoInfo:
        """Duration, display size, keyframes... of a video, probed once per original."""
        info = self._videos.get(source.original.identity)
        if info is None:
            info = await self.pool.run(probe_video, source.original.path)
            self._videos[source.original.identity] = info
        return info
