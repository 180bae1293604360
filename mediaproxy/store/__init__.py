"""The store of originals: the one owner, on this node, of the files its origin holds (SPEC §7).

Services ask it which file an entry's request means (`get`), and read that file through it: opened as a seekable
binary file (`open`, in a worker thread), whole (`read_bytes`, small images), or streamed by range (`stream`).
A local origin's files are opened directly; an http origin's are read by range in fixed blocks, each fetched once
for the whole node and kept in the disk cache.
"""

from .store import Store

__all__ = ["Store"]
