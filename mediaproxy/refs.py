"""The small vocabulary shared by the URL grammar, the origins and the caches: which entry, which of its files, and
which entries were purged."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ID_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class EntryRef:
    partner_id: int
    entry_id: str

    @property
    def prefix(self) -> str:
        """How the keys of everything filed under this entry start (owners of cached files, located facts)."""
        return f"{self.partner_id}/{self.entry_id}/"


@dataclass(frozen=True, slots=True)
class FileSelector:
    """Which file of an entry: the original (all None), a flavor, a versioned original, or the one with an extension."""

    flavor_id: str | None = None
    version: int | None = None
    extension: str | None = None  # raw's type/download/format/{ext}: the flavor (or original) with that extension


def entry_prefix(owner: str) -> str:
    """The entry part of an owner ("{partner}/{entry}/{file}|{identity}" → "{partner}/{entry}/")."""
    return owner[:owner.index("/", owner.index("/") + 1) + 1]


@dataclass(frozen=True)
class Purged:
    """Entries whose cached things a process must drop (SPEC §8): what each memory cache is told after a purge."""

    refs: frozenset[EntryRef] = frozenset()
    everything: bool = False  # this process missed purges (the log was trimmed past it): drop all
    prefixes: frozenset[str] = field(init=False, repr=False, compare=False)  # their EntryRef.prefix

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefixes", frozenset(ref.prefix for ref in self.refs))

    def holds(self, ref: EntryRef) -> bool:
        return self.everything or ref in self.refs

    def owns(self, owner: str) -> bool:
        """Whether a key filed under an owner ("{partner}/{entry}/{file}|{identity}") belongs to these entries."""
        return self.everything or entry_prefix(owner) in self.prefixes
