"""Media operations: pure functions on files and pixels (Pillow, PyAV). Nothing here knows about HTTP."""
