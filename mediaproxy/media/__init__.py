"""Media operations: pure functions on files and pixels (Pillow, PyAV). Nothing here knows about HTTP."""

from PIL import Image

# Pillow's own bomb guard is global and raises mid-open; mediaproxy checks pixel counts against its configured
# limit itself, from the header and before decoding, so every media function sees an image's real size.
Image.MAX_IMAGE_PIXELS = None
