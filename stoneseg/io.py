"""The one place that decodes and resizes photos and masks (record builder and prediction both use it).

Photos come out RGB uint8, masks uint8 with values exactly {0, 1}; both EXIF-oriented. A JPEG is decoded
once, scaled down in the DCT domain by libjpeg (OpenCV ``IMREAD_REDUCED_*``), then area-resized to the
target size; other formats are decoded at full size and area-resized.
"""

import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np



@dataclass(frozen=True)
class Scale:
    """Resize by `factor` (0 < factor <= 1) with the aspect ratio kept, instead of to a fixed size.

    A side of n pixels becomes ceil(n * factor), as libjpeg rounds its 1/2, 1/4 and 1/8 decodes, so
    those factors need the reduced JPEG decode alone, with no resize after it.
    """

    factor: float

    def __post_init__(self):
        if not 0 < self.factor <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.factor}")

    def of(self, original: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) that a photo of `original` (height, width) is resized to."""
        return tuple(max(1, math.ceil(n * self.factor - 1e-9)) for n in original)


Size = int | tuple[int, int] | Scale

# The photo files a folder scan picks up (record building, prediction), in any letter case.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
# Masks may also be TIFFs: 16- or 32-bit instance-label images are often stored so (decode_stones).
MASK_SUFFIXES = PHOTO_SUFFIXES + (".tif", ".tiff")
_PNG, _TIFF_LE, _TIFF_BE = b"\x89PNG", b"II*\x00", b"MM\x00*"

# The JPEG scale-down is the largest of 1/8, 1/4, 1/2 that leaves at least REDUCTION_MARGIN x the target
# size on both axes; INTER_AREA then does the rest. The DCT decode itself matches a box average closely
# (0.3 grey levels), but the two-stage result is slightly blurrier than one full-resolution area resize,
# most when the second stage is small. Mean absolute difference from full decode + area resize, size 256:
#   margin 1 (just "at least the target size"): stones20 0.3-4.4 grey levels (Image12: 2.2);
#   margin 1.5: stones20 0-2.7 (Image12: 0.6, only the densely textured Image10/11 above 2), and the
#       3456x4806 sample keeps the 1/8 decode (1.1 grey levels);
#   margin 2: no better on Image10/11, and the sample drops to the 1/4 decode (~40% more decode time).
REDUCTION_MARGIN = 1.5
_REDUCED_COLOUR = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2,
                   1: cv2.IMREAD_COLOR}
_REDUCED_GREY = {8: cv2.IMREAD_REDUCED_GRAYSCALE_8, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 1: cv2.IMREAD_GRAYSCALE}

# Mask sanity rule. A black/white mask may carry a few odd pixels (JPEG ringing, specks); it is rejected
# when more than MASK_ODD_PIXEL_LIMIT of its (reduced) pixels are either coloured (channels differ by more
# than 64) or mid-grey (65..190) with no near-black or near-white neighbour. The neighbour clause accepts
# the grey that anti-aliasing and DCT downscaling put along every stone edge. Measured on the 20 real
# stones20 masks at every reduction: at most 0.2% odd pixels; photos used as masks: 12-89%.
MASK_ODD_PIXEL_LIMIT = 0.02
_FAR_FROM_BLACK_AND_WHITE = (65, 190)
_COLOUR_SPREAD = 64
# A resized mask pixel is stone when its grey level is above this (255 = stone, 0 = background).
MASK_THRESHOLD = 127

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOS, _EOI, _APP1 = 0xDA, 0xD9, 0xE1
_EXIF_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """A photo or mask that cannot be used; ``str()`` names the file and the problem."""

    def __init__(self, file: str, problem: str):
        super().__init__(file, problem)  # both in args, so it survives pickling between processes
        self.file = file
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def read_photo(path: str | Path, size: Size) -> tuple[np.ndarray, tuple[int, int]]:
    """Photo resized to `size` (a fixed size, or a Scale of its own), RGB uint8 (H, W, 3), and its
    original EXIF-oriented (height, width)."""
    return decode_photo(read_bytes(path), size, str(path))


def read_mask(path: str | Path, size: Size) -> tuple[np.ndarray, tuple[int, int]]:
    """Mask resized to `size`, uint8 (H, W) of exactly {0, 1}, and its original oriented (height, width)."""
    return decode_mask(read_bytes(path), size, str(path))


def read_photo_full(path: str | Path) -> np.ndarray:
    """Photo at full resolution, RGB uint8 (H, W, 3), EXIF-oriented."""
    image, _, _ = _decode(read_bytes(path), str(path), None)
    return _to_rgb(image)


def decode_photo(data: bytes, size: Size, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """`read_photo` for file bytes already in memory; `name` is used in error messages."""
    image, original, target = _decode(data, name, size)
    return _resize(_to_rgb(image), target), original


def decode_mask(data: bytes, size: Size, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """`read_mask` for file bytes already in memory; `name` is used in error messages.

    An instance-label image (see `decode_stones`) is made a black/white mask first: its stones, with the
    pixels where two stones touch set to background, so that each 8-connected region is one stone as in a
    gap mask."""
    labels = _decode_labels(data, name)
    if labels is not None:
        grey = separated_stones(labels) * np.uint8(255)
        return (_resize(grey, _resolve(size, labels.shape)) > MASK_THRESHOLD).astype(np.uint8), labels.shape
    image, original, target = _decode(data, name, size)
    return (_resize(_grey_mask(image, name), target) > MASK_THRESHOLD).astype(np.uint8), original


def decode_stones(data: bytes, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """A mask file's true stones at its full, oriented size: int32 labels (0 = background, stones 1..n), and
    that (height, width).

    Two layouts: an instance-label image, a PNG or TIFF of 16 or 32 bits per pixel with one value per stone
    (how Cellpose, StarDist and ImageGrains store their data sets), read as it is; or a black/white gap mask
    (8 bits, the prototype's layout), whose 8-connected regions are the stones (its thin background gaps
    separate touching stones)."""
    labels = _decode_labels(data, name)
    if labels is not None:
        return labels, labels.shape
    image, original, _ = _decode(data, name, None)
    mask = (_grey_mask(image, name) > MASK_THRESHOLD).view(np.uint8)
    return cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)[1], original


def separated_stones(labels: np.ndarray) -> np.ndarray:
    """uint8 {0, 1}: the stones of instance `labels`, minus every stone pixel with an 8-neighbour of another
    stone, so touching stones are parted by a background gap and each 8-connected region is one stone."""
    wide = labels.max(initial=0) > np.iinfo(np.uint16).max - 1
    morph = labels.astype(np.float32 if wide else np.uint16)  # dtypes OpenCV's morphology takes exactly
    square = np.ones((3, 3), np.uint8)
    larger_near = cv2.dilate(morph, square) > morph
    # The smallest stone label near each pixel: the background made larger than any label first.
    no_background = np.where(morph > 0, morph, np.float32(2**24) if wide else np.uint16(65535))
    smaller_near = cv2.erode(no_background, square) < morph
    return ((labels > 0) & ~larger_near & ~smaller_near).view(np.uint8)


def _decode_labels(data: bytes, name: str) -> np.ndarray | None:
    """int32 labels of a 16- or 32-bit single-channel PNG or TIFF; None for anything else (an 8-bit mask,
    a JPEG), which the black/white mask path reads."""
    if data.startswith(_PNG):
        if len(data) < 26 or data[24] != 16:  # IHDR's bit depth: an 8-bit PNG is a black/white mask
            return None
    elif not data.startswith((_TIFF_LE, _TIFF_BE)):
        return None
    image = _imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED, name)
    if image.dtype == np.uint8:
        return None
    if image.ndim != 2 or image.dtype not in (np.uint16, np.int32, np.uint32):
        raise ImageError(name, f"an instance-label mask must be one channel of 16 or 32 bits, got {image.dtype} "
                               f"with {1 if image.ndim == 2 else image.shape[2]} channels")
    if image.min() < 0 or image.max() >= 2**24:
        raise ImageError(name, "an instance-label mask must hold labels 0 to 16,777,215")
    return image.astype(np.int32)


def _grey_mask(image: np.ndarray, name: str) -> np.ndarray:
    """A decoded black/white mask as grey (H, W) uint8, checked: ImageError when it is not black/white."""
    if image.ndim == 3:
        spread = image.max(axis=2).astype(np.int16) - image.min(axis=2)
        coloured = float(np.mean(spread > _COLOUR_SPREAD))
        if coloured > MASK_ODD_PIXEL_LIMIT:
            raise ImageError(name, f"mask is not black/white: {coloured:.0%} of its pixels are coloured")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    stray_grey = _stray_grey_fraction(image)
    if stray_grey > MASK_ODD_PIXEL_LIMIT:
        raise ImageError(name, f"mask is not black/white: {stray_grey:.0%} of its pixels are mid-grey "
                               "away from any stone edge")
    return image


def check_same_size(photo: str, photo_size: tuple[int, int], mask: str, mask_size: tuple[int, int]) -> None:
    """Raise ImageError naming `mask` when its oriented (height, width) differs from its photo's."""
    if mask_size != photo_size:
        transposed = (" (the sizes are transposed: the two files' EXIF orientations may disagree)"
                      if mask_size == photo_size[::-1] else "")
        raise ImageError(mask, f"mask size {_wxh(mask_size)} differs from its photo {photo}, "
                               f"{_wxh(photo_size)}{transposed}")


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]} (width x height)"


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 array."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR arrays as RGB PNGs
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not PNG-encode an array of shape {image.shape}")
    return buffer.tobytes()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 array."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an array of shape {image.shape}")
    return buffer.tobytes()


def target_size(size: Size) -> tuple[int, int]:
    """(height, width) from an int (square) or a (height, width) pair of positive ints."""
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or not all(isinstance(n, int) and n > 0 for n in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return hw


@dataclass(frozen=True)
class _JpegHeader:
    height: int  # as stored, before EXIF orientation
    width: int
    channels: int
    orientation: int  # EXIF orientation 1..8 (1 = as stored)

    @property
    def oriented_size(self) -> tuple[int, int]:
        transposed = self.orientation in (5, 6, 7, 8)
        return (self.width, self.height) if transposed else (self.height, self.width)


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; an unreadable file raises ImageError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageError(str(path), f"cannot be read ({error.strerror or error})") from None


def _decode(data: bytes, name: str, size: Size | None) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Decode once, EXIF-oriented, as BGR (H, W, 3) or, for one-channel JPEGs, grey (H, W).

    JPEGs are scaled down in the DCT domain as far as `size` allows (None: full size). Returns the
    decoded array, the file's original oriented (height, width) and the (height, width) to resize to.
    """
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    buffer = np.frombuffer(data, np.uint8)
    if data[:2] != b"\xff\xd8":  # not a JPEG: PNG or another format OpenCV reads, at full size
        image = _imdecode(buffer, cv2.IMREAD_COLOR, name)
        return image, image.shape[:2], _resolve(size, image.shape[:2])
    header = _read_jpeg_header(data, name)
    original = header.oriented_size
    target = _resolve(size, original)
    factor = _reduction(original, target, exact=isinstance(size, Scale)) if size is not None else 1
    modes = _REDUCED_GREY if header.channels == 1 else _REDUCED_COLOUR
    image = _imdecode(buffer, modes[factor], name)
    expected = tuple(-(-n // factor) for n in original)  # libjpeg rounds scaled sizes up
    if image.shape[:2] != expected:
        raise ImageError(name, f"decoded as {image.shape[1]}x{image.shape[0]} (width x height), expected "
                               f"{expected[1]}x{expected[0]}: unreadable EXIF orientation")
    return image, original, target


def _resolve(size: Size | None, original: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) a file of `original` size is resized to (its own size for None)."""
    if size is None:
        return tuple(original)
    return size.of(original) if isinstance(size, Scale) else target_size(size)


def _imdecode(buffer: np.ndarray, flags: int, name: str) -> np.ndarray:
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(name, "corrupt, truncated or unsupported image data (OpenCV could not decode it)")
    return image


def _reduction(original: tuple[int, int], target: tuple[int, int], exact: bool = False) -> int:
    """Largest JPEG scale-down (8, 4, 2 or 1) leaving at least REDUCTION_MARGIN x target on both axes,
    or, with `exact`, one that gives `target` itself (a Scale of 1/2, 1/4 or 1/8: no resize after)."""
    for factor in (8, 4, 2):
        reduced = [-(-n // factor) for n in original]
        if exact and list(target) == reduced:
            return factor
        if all(r >= REDUCTION_MARGIN * t for r, t in zip(reduced, target)):
            return factor
    return 1


def _read_jpeg_header(data: bytes, name: str) -> _JpegHeader:
    """Frame size, channels and EXIF orientation from the JPEG markers, without decoding any pixels.

    A few dozen lines of marker walking instead of tf.io.extract_jpeg_shape: that would import TensorFlow
    (seconds, hundreds of MB) into every decode worker and ignores EXIF orientation anyway; OpenCV has no
    header-only query. The walk also checks that an end-of-image marker follows the first scan: a
    truncated JPEG is otherwise decoded by libjpeg with a warning and a grey-filled bottom, not an error.
    """
    truncated = ImageError(name, "truncated JPEG (the file ends inside its header)")
    position, frame, orientation = 2, None, 1
    while True:
        if position + 4 > len(data):
            raise truncated
        if data[position] != 0xFF:
            raise ImageError(name, f"corrupt JPEG header (no marker at byte {position})")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            position += 2
            continue
        if marker == _EOI:
            raise ImageError(name, "corrupt JPEG (end-of-image marker before any image data)")
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        if length < 2 or len(segment) < length - 2:
            raise truncated
        if marker == _SOS:
            break
        if marker in _SOF_MARKERS and len(segment) >= 6:
            _, height, width, channels = struct.unpack(">BHHB", segment[:6])
            frame = (height, width, channels)
        elif marker == _APP1 and segment.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(segment[6:], name)
        position += 2 + length
    if frame is None or min(frame) == 0:
        raise ImageError(name, "corrupt JPEG header (no usable frame size)")
    if data.rfind(b"\xff\xd9") < position:  # cannot occur inside entropy-coded data (0xFF is stuffed)
        raise ImageError(name, "truncated JPEG (no end-of-image marker after the image data)")
    return _JpegHeader(*frame, orientation=orientation)


def _exif_orientation(tiff: bytes, name: str) -> int:
    """Orientation tag (1..8) from IFD0 of an EXIF TIFF block; 1 if absent or unreadable.

    A block that ends before its directory does is corrupt: the file is still a usable picture (OpenCV
    finds no orientation in it either, and the size check in _decode catches any disagreement), so it
    is read as stored, with a warning on stderr naming it, since its pixels may be turned.
    """
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, _, _, value = struct.unpack_from(order + "HHIH", tiff, entry)
            if tag == _EXIF_ORIENTATION_TAG:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        print(f"warning: {name}: corrupt EXIF block (it ends inside its first directory); EXIF orientation "
              "ignored, the picture is used as stored", file=sys.stderr)
    return 1


def _to_rgb(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)


def _resize(image: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == target:
        return image
    return cv2.resize(image, (target[1], target[0]), interpolation=cv2.INTER_AREA)


def _stray_grey_fraction(grey: np.ndarray) -> float:
    """Fraction of pixels far from black and white with no near-black or near-white neighbour."""
    low, high = _FAR_FROM_BLACK_AND_WHITE
    mid_grey = (grey >= low) & (grey <= high)
    near_extreme = (~mid_grey).astype(np.uint8)
    beside_extreme = cv2.dilate(near_extreme, np.ones((3, 3), np.uint8)) > 0
    return float(np.mean(mid_grey & ~beside_extreme))
