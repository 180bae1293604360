"""Where originals come from: the origin layout both kinds share, and what an origin hands back.

    {partner_id}/{entry_id}/original.{ext}              the source as uploaded
    {partner_id}/{entry_id}/flavor_{flavor_id}.{ext}    optional renditions
    {partner_id}/{entry_id}/entry.json                  optional manifest: {"name", "original", "flavors",
                                                        "versions", "thumb_offset"}
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from ..errors import EntryNotFound, FlavorNotFound, MediaProxyError, UpstreamFailed
from ..refs import ID_PATTERN, EntryRef, FileSelector

MANIFEST_NAME = "entry.json"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")


@dataclass(frozen=True)
class EntryManifest:
    name: str | None = None
    original: str | None = None
    flavors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    versions: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    thumb_offset: float | None = None


@dataclass(frozen=True)
class EntryFile:
    """One file of an entry (its original, a version or a flavor), as its origin describes it."""

    ref: EntryRef
    file_name: str  # its name at the origin: "original.jpg", "flavor_0_abc.mp4"
    size: int
    mtime: float  # last modified at the origin
    identity: str  # changes whenever the bytes may have; part of every key derived from this file
    manifest: EntryManifest
    path: Path | None = None  # a local origin's file
    url: str | None = None  # an http origin's file, with the validators its blocks are fetched under
    etag: str | None = None
    last_modified: str | None = None

    @property
    def extension(self) -> str:
        return self.file_name.rpartition(".")[2].lower() if "." in self.file_name else ""

    @functools.cached_property  # asked several times a request
    def owner(self) -> str:
        """What everything cached from this file is filed under (dropped together when it changes)."""
        return f"{self.ref.prefix}{self.file_name}|{self.identity}"


@dataclass(frozen=True)
class ListedEntry:
    ref: EntryRef
    flavors: tuple[str, ...] = ()  # flavor ids the listing shows (an entry.json may name more)


class OriginalChanged(UpstreamFailed):
    """The origin's file changed (or went) while it was being read: nothing read so far may be stitched to more."""

    def __init__(self, file: EntryFile) -> None:
        super().__init__(f"the original of {file.ref.entry_id} changed while it was read; try again")
        self.file = file


class Origin(Protocol):
    remote: bool  # files are read by range through the disk cache (http), not opened directly (local)

    async def locate(self, ref: EntryRef, selector: FileSelector) -> EntryFile:
        """The selected file. Raises EntryNotFound, FlavorNotFound, UpstreamFailed, TooLarge."""

    async def read_range(self, file: EntryFile, start: int, end: int) -> bytes:
        """Bytes [start, end] of a remote file, as it was when located. Raises OriginalChanged, RangesIgnored,
        UpstreamFailed."""

    def read_whole(self, file: EntryFile) -> AsyncIterator[bytes]:
        """The whole remote file, for upstreams that ignore Range."""

    async def list_entries(self) -> list[ListedEntry]:
        """The entries the origin can name (a local folder's; an http origin's listing file)."""

    async def reachable(self) -> bool:
        """Whether the origin answers at all (for /healthz)."""

    async def close(self) -> None: ...


class RangesIgnored(Exception):
    """The upstream answered a Range request with the whole, unchanged file: read it whole instead."""


def file_record(file: EntryFile) -> dict:
    """A located file as JSON, for the node's shared index (the other workers need not ask the origin again)."""
    manifest = file.manifest
    return {"ref": [file.ref.partner_id, file.ref.entry_id], "file_name": file.file_name, "size": file.size,
            "mtime": file.mtime, "identity": file.identity, "url": file.url, "etag": file.etag,
            "last_modified": file.last_modified,
            "manifest": {"name": manifest.name, "original": manifest.original, "flavors": dict(manifest.flavors),
                         "versions": {str(k): v for k, v in manifest.versions.items()},
                         "thumb_offset": manifest.thumb_offset}}


def file_from_record(record: dict) -> EntryFile:
    manifest = record["manifest"]
    return EntryFile(
        ref=EntryRef(*record["ref"]), file_name=record["file_name"], size=record["size"], mtime=record["mtime"],
        identity=record["identity"], url=record["url"], etag=record["etag"], last_modified=record["last_modified"],
        manifest=EntryManifest(name=manifest["name"], original=manifest["original"],
                               flavors=MappingProxyType(manifest["flavors"]),
                               versions=MappingProxyType({int(k): v for k, v in manifest["versions"].items()}),
                               thumb_offset=manifest["thumb_offset"]))


def parse_manifest(body: bytes, ref: EntryRef) -> EntryManifest:
    """entry.json → EntryManifest; anything malformed is the origin's fault (502), never a path outside the entry."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamFailed(f"origin: entry.json of {ref.entry_id} is not valid JSON") from None
    if not isinstance(data, dict):
        raise UpstreamFailed(f"origin: entry.json of {ref.entry_id} is not a JSON object")

    def file_name(value, what: str) -> str:
        if not isinstance(value, str) or not _FILE_NAME.match(value):
            raise UpstreamFailed(f"origin: entry.json of {ref.entry_id}: {what} is not a plain file name")
        return value

    def name_map(key: str, key_ok) -> dict:
        value = data.get(key) or {}
        if not isinstance(value, dict) or not all(key_ok(k) for k in value):
            raise UpstreamFailed(f"origin: entry.json of {ref.entry_id}: {key} is not a map of ids to file names")
        return {k: file_name(v, f"{key}[{k}]") for k, v in value.items()}

    name = data.get("name")
    thumb_offset = data.get("thumb_offset")
    if not isinstance(thumb_offset, (int, float)) or isinstance(thumb_offset, bool) or not math.isfinite(thumb_offset):
        thumb_offset = None
    return EntryManifest(
        name=name if isinstance(name, str) and name.strip() else None,
        original=file_name(data["original"], "original") if data.get("original") is not None else None,
        flavors=MappingProxyType(name_map("flavors", lambda k: bool(ID_PATTERN.match(k)))),
        versions=MappingProxyType({int(k): v for k, v in name_map("versions", _version_key).items()}),
        thumb_offset=thumb_offset,
    )


def _version_key(key: str) -> bool:
    return key.isascii() and key.isdigit() and len(key) <= 9


def candidate_names(manifest: EntryManifest, selector: FileSelector, extensions: Iterable[str],
                    listing: Iterable[str] | None = None) -> list[str]:
    """The file names that may hold the selected file, best first.

    `listing` is the entry folder's file names where the origin can list (local); without it (http) the caller
    tries the names in order and takes the first that exists.
    """
    extensions = list(extensions)
    listed = sorted(listing) if listing is not None else None

    if selector.flavor_id is not None:
        if selector.flavor_id in manifest.flavors:
            return [manifest.flavors[selector.flavor_id]]
        stem = f"flavor_{selector.flavor_id}"
        return [f"{stem}.{ext}" for ext in extensions] + _others(listed, stem)

    if selector.extension is not None:
        ext = selector.extension
        names = [n for n in (manifest.original, *manifest.flavors.values()) if n and n.lower().endswith("." + ext)]
        names.append(f"original.{ext}")
        if listed is not None:
            names += [n for n in listed if n.startswith("flavor_") and n.lower().endswith("." + ext)]
        return list(dict.fromkeys(names))

    names = []
    if selector.version is not None and selector.version in manifest.versions:
        names.append(manifest.versions[selector.version])
    if manifest.original:
        return names + [manifest.original]
    return names + [f"original.{ext}" for ext in extensions] + _others(listed, "original")


def _others(listed: list[str] | None, stem: str) -> list[str]:
    """`stem.*` files of the listing whose extension is not in the configured list (found last)."""
    if listed is None:
        return []
    return [name for name in listed if name.startswith(stem + ".") and _FILE_NAME.match(name)]


def not_found(ref: EntryRef, selector: FileSelector) -> MediaProxyError:
    if selector.flavor_id is not None:
        return FlavorNotFound(f"entry {ref.entry_id} has no flavor {selector.flavor_id}")
    if selector.extension is not None:
        return FlavorNotFound(f"entry {ref.entry_id} has no file with extension {selector.extension}")
    return EntryNotFound(f"no entry {ref.entry_id} for partner {ref.partner_id}")
