"""Where originals come from: the origin layout both kinds share, and what an origin hands back.

    {partner_id}/{entry_id}/original.{ext}              the source as uploaded
    {partner_id}/{entry_id}/flavor_{flavor_id}.{ext}    optional renditions
    {partner_id}/{entry_id}/entry.json                  optional manifest: {"name", "original", "flavors",
                                                        "versions", "thumb_offset"}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
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
class Original:
    """One file of an entry (its original, a version or a flavor), readable on local disk."""

    ref: EntryRef
    file_name: str  # its name at the origin: "original.jpg", "flavor_0_abc.mp4"
    path: Path
    size: int
    mtime: float  # last modified at the origin
    identity: str  # changes whenever the bytes may have; part of every key derived from this file
    manifest: EntryManifest

    @property
    def extension(self) -> str:
        return self.file_name.rpartition(".")[2].lower() if "." in self.file_name else ""


class Origin(Protocol):
    async def fetch(self, ref: EntryRef, selector: FileSelector) -> Original:
        """The selected file, on local disk. Raises EntryNotFound, FlavorNotFound, UpstreamFailed, TooLarge."""

    async def reachable(self) -> bool:
        """Whether the origin answers at all (for /healthz)."""

    async def close(self) -> None: ...


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
