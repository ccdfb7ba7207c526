"""A test helper shared by the tests that read EXIF-rotated photos."""

import struct


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with a minimal APP1 Exif segment (IFD0 holding only the orientation tag) after SOI."""
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
