"""The small vocabulary shared by the URL grammar and the origins: which entry, and which of its files."""

from __future__ import annotations

import re
from dataclasses import dataclass

ID_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class EntryRef:
    partner_id: int
    entry_id: str


@dataclass(frozen=True, slots=True)
class FileSelector:
    """Which file of an entry: the original (all None), a flavor, a versioned original, or the one with an extension."""

    flavor_id: str | None = None
    version: int | None = None
    extension: str | None = None  # raw's type/download/format/{ext}: the flavor (or original) with that extension
