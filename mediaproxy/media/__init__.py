"""Media operations: pure functions on files and pixels (Pillow, PyAV). Nothing here knows about HTTP."""

import pillow_heif
from PIL import Image

# Pillow's own bomb guard is global and raises mid-open; mediaproxy checks pixel counts against its configured
# limit itself, from the header and before decoding, so every media function sees an image's real size.
Image.MAX_IMAGE_PIXELS = None

# HEIC/HEIF (phone photos) through libheif. It applies the container's rotation and mirroring while decoding and
# sets the EXIF orientation to 1, so the picture comes out upright as a JPEG's does once oriented. AVIF is
# Pillow's own.
pillow_heif.register_heif_opener()
