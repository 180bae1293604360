"""A remote original as a seekable binary file: what PyAV, Pillow and the clip index read, in a worker thread.

Bytes come in fixed blocks: from the disk cache when a block is there, else from the store, which fetches it
once for the whole node (on the event loop; this thread waits for it). Seeking costs nothing, and the size is
known up front, so `seek(0, SEEK_END)` (how FFmpeg learns a size) never fetches.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable


class BlockReader(io.RawIOBase):
    def __init__(self, size: int, block_bytes: int, block: Callable[[int], bytes]) -> None:
        super().__init__()
        self.size = size
        self._block_bytes = block_bytes
        self._block = block  # index → that block's bytes (blocking)
        self._position = 0
        self._current: tuple[int, bytes] | None = None  # the block read last: small reads are slices of it

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._position + offset
        elif whence == os.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise OSError(22, "negative seek position")
        self._position = position
        return position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._position + size)
        pieces = []
        while self._position < end:
            index, offset = divmod(self._position, self._block_bytes)
            block = self._block_at(index)
            piece = block[offset:offset + end - self._position]
            if not piece:
                break  # a block shorter than it should be: the store checks lengths, so only past the end
            pieces.append(piece)
            self._position += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def _block_at(self, index: int) -> bytes:
        if self._current is None or self._current[0] != index:
            self._current = (index, self._block(index))
        return self._current[1]
