"""Originals in a local folder, laid out as `origins.base` describes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from stat import S_ISREG

from ..errors import EntryNotFound, TooLarge, UpstreamFailed
from ..refs import ID_PATTERN, EntryRef, FileSelector
from .base import (MANIFEST_NAME, EntryFile, EntryManifest, ListedEntry, candidate_names, not_found,
                   parse_manifest)


class LocalOrigin:
    remote = False

    def __init__(self, root: Path, extensions: tuple[str, ...], max_bytes: int) -> None:
        self.root = root.resolve()
        self.extensions = extensions
        self.max_bytes = max_bytes

    async def locate(self, ref: EntryRef, selector: FileSelector) -> EntryFile:
        return await asyncio.to_thread(self._locate, ref, selector)

    def _locate(self, ref: EntryRef, selector: FileSelector) -> EntryFile:
        folder = self.root / str(ref.partner_id) / ref.entry_id
        try:
            listing = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            raise EntryNotFound(f"no entry {ref.entry_id} for partner {ref.partner_id}") from None
        except OSError as error:  # a link loop, no permission...
            raise UpstreamFailed(f"origin: the folder of {ref.entry_id} cannot be read ({error.strerror})") from None
        manifest = EntryManifest()
        if MANIFEST_NAME in listing:
            manifest = parse_manifest(_read_manifest(folder / MANIFEST_NAME, ref), ref)
        present = set(listing)
        for name in candidate_names(manifest, selector, self.extensions, listing):
            if name not in present:
                continue
            try:
                path = (folder / name).resolve()
                if not path.is_relative_to(self.root) or not path.is_file():
                    continue  # a link out of the origin root is never followed; FIFOs and folders are no files
                stat = path.stat()
            except (OSError, RuntimeError):  # a link loop, a file that just went away
                continue
            if stat.st_size > self.max_bytes:
                raise TooLarge(f"the original of {ref.entry_id} is {stat.st_size} bytes (limit {self.max_bytes})")
            return EntryFile(ref=ref, file_name=name, path=path, size=stat.st_size, mtime=stat.st_mtime,
                             identity=f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}", manifest=manifest)
        raise not_found(ref, selector)

    async def read_range(self, file: EntryFile, start: int, end: int) -> bytes:
        raise NotImplementedError("local files are opened directly")

    def read_whole(self, file: EntryFile):
        raise NotImplementedError("local files are opened directly")

    async def list_entries(self) -> list[ListedEntry]:
        return await asyncio.to_thread(self._list_entries)

    def _list_entries(self) -> list[ListedEntry]:
        """`{partner}/{entry}/` folders of the root, with the flavors their file names show."""
        found = []
        for partner in sorted(self.root.iterdir(), key=lambda path: path.name):
            if not (partner.is_dir() and partner.name.lstrip("-").isdigit()):
                continue
            for entry in sorted(partner.iterdir()):
                if entry.is_dir() and ID_PATTERN.match(entry.name):
                    flavors = sorted(name for name in (path.stem.removeprefix("flavor_")
                                                       for path in entry.glob("flavor_*.*")) if ID_PATTERN.match(name))
                    found.append(ListedEntry(EntryRef(int(partner.name), entry.name), tuple(flavors)))
        return found

    async def reachable(self) -> bool:
        return await asyncio.to_thread(self.root.is_dir)

    async def close(self) -> None:
        pass


def _read_manifest(path: Path, ref: EntryRef) -> bytes:
    """entry.json, if it is a regular file of sane size (a FIFO would block a thread forever)."""
    try:
        stat = path.stat()
        if not S_ISREG(stat.st_mode) or stat.st_size > 1_000_000:
            raise UpstreamFailed(f"origin: entry.json of {ref.entry_id} is not a regular file of at most 1 MB")
        return path.read_bytes()
    except OSError as error:
        raise UpstreamFailed(f"origin: entry.json of {ref.entry_id} cannot be read ({error.strerror})") from None
