"""An entry's file together with what it really is: the starting point of every service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from cachetools import LRUCache

from ..cache.memory import EntryKeys
from ..media.probe import MediaInfo, probe
from ..media.video import VideoInfo, probe_video
from ..origins.base import EntryFile
from ..refs import EntryRef, FileSelector, Purged, entry_prefix
from ..store import Store
from ..workpool import WorkPool

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    file: EntryFile
    media: MediaInfo


class Sources:
    def __init__(self, store: Store, pool: WorkPool, max_pixels: int) -> None:
        self.store = store
        self.pool = pool
        self.max_pixels = max_pixels  # FFmpeg's stream analysis and first-frame decode stay under it
        self._probed: LRUCache[str, MediaInfo] = LRUCache(maxsize=50_000)  # by the file's owner (with its identity)
        self._videos: LRUCache[str, VideoInfo] = LRUCache(maxsize=50_000)
        self._probed_keys, self._video_keys = EntryKeys(self._probed, entry_prefix), EntryKeys(self._videos,
                                                                                                entry_prefix)

    async def get(self, ref: EntryRef, selector: FileSelector = FileSelector()) -> Source:
        file = await self.store.get(ref, selector)
        media = self._probed.get(file.owner)
        if media is None:
            media = await self.read(file, lambda source: probe(source, file.file_name, self.max_pixels))
            self._probed[file.owner] = media
            self._probed_keys.added(file.owner)
        return Source(file, media)

    async def video_info(self, source: Source) -> VideoInfo:
        """Duration, display size, keyframes... of a video, probed once per original."""
        info = self._videos.get(source.file.owner)
        if info is None:
            info = await self.read(source.file, lambda opened: probe_video(opened, self.max_pixels))
            self._videos[source.file.owner] = info
            self._video_keys.added(source.file.owner)
        return info

    def forget_purged(self, purged: Purged) -> None:
        """Drop the probes of purged entries' files."""
        self._probed_keys.forget(purged)
        self._video_keys.forget(purged)

    async def read(self, file: EntryFile, work: Callable[[BinaryIO], T]) -> T:
        """`work(the opened file)` on the work pool (a remote file's blocks are fetched as `work` reads them)."""
        return await self.pool.run(_with_opened, self.store.open, file, work)

    async def read_bytes(self, file: EntryFile) -> bytes:
        return await self.store.read_bytes(file)


def _with_opened(open_file: Callable[[EntryFile], BinaryIO], file: EntryFile, work: Callable[[BinaryIO], T]) -> T:
    with open_file(file) as opened:
        return work(opened)
