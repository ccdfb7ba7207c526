"""A test helper shared by the tests that read EXIF-rotated photos."""

import struct

import numpy as np

# What each EXIF orientation asks a viewer to do with the stored pixels, written with NumPy alone
# (independently of OpenCV, which applies it when decoding): 1 as stored, 2 mirror left-right,
# 3 rotate 180, 4 mirror top-bottom, 5 transpose, 6 rotate 90 clockwise, 7 transverse (mirror across
# the anti-diagonal), 8 rotate 90 counter-clockwise.
ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, k=1),
}


def with_exif_orientation(jpeg: bytes, orientation: int, big_endian: bool = False) -> bytes:
    """The JPEG with a minimal APP1 Exif segment (IFD0 holding only the orientation tag) after SOI, in
    the TIFF byte order of Intel ("II", little-endian) or Motorola ("MM", big-endian) cameras."""
    order = ">" if big_endian else "<"
    ifd0 = struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(order + "I", 8) + ifd0 + struct.pack(order + "I", 0)
    return _with_app1(jpeg, b"Exif\x00\x00" + tiff)


def with_corrupt_exif(jpeg: bytes) -> bytes:
    """The JPEG with an Exif segment whose IFD0 offset points past the end of the segment."""
    return _with_app1(jpeg, b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 5000) + bytes(8))


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
