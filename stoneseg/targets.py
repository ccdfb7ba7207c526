"""The training targets of the instance-aware outputs, made from a photo's true stones (instance labels).

- `boundary_band`: 1 on the pixels within `width` pixels of an edge between two different labels (a stone
  and the background, or two stones), inside and outside the stone; 0 elsewhere. The band covers each
  stone's rim and the gaps between stones, so the stones' cores (stone minus band) never touch.
- `normalised_distance`: each stone pixel's distance to the nearest pixel that is not of its own stone,
  divided by the largest such distance in the stone: 1 at each stone's centre, falling to 0 at its edge
  (also where it touches another stone); 0 on the background.

`records_targets` makes both at a record's size from labels at the photo's full size, and `OUTPUT_TARGETS`
says which target trains which output (stoneseg.choices.OUTPUTS). Pure NumPy/OpenCV: the record builder's
decode workers never load TensorFlow.
"""

import cv2
import numpy as np
from scipy import ndimage

# The band reaches this many pixels (Chebyshev distance, at the record's resolution) to either side of an edge.
# Measured with perfect maps (the targets themselves) on stones20's 17 train and val photos at scale 0.5, the
# masks' gaps closed by a 3x3 closing as a network closes them (python -m bench.split_targets): the boundary
# split found stones with F1
# 0.954 at width 1 and 0.902 at width 2 (a 2 px band leaves no core in the river gravel, 8 px across in the
# record, so its stones are flooded by their neighbours).
BOUNDARY_WIDTH = 1
DISTANCE_LEVELS = 255  # the normalised distance is stored as uint8 0..255 (stoneseg.records: distance/png)

# The record feature behind each output's second target; every output trains its stone probability on mask/png.
OUTPUT_TARGETS = {"binary": (), "boundary": ("boundary",), "distance": ("distance",)}


def _as_morphology_labels(labels: np.ndarray) -> np.ndarray:
    """Labels in a dtype OpenCV's dilate/erode/resize take exactly: uint16 up to 65,535, else float32
    (exact up to 2**24)."""
    if labels.max(initial=0) <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint16, copy=False)
    if labels.max() >= 2**24:
        raise ValueError(f"{labels.max():,} labels are more than the targets handle exactly (2**24)")
    return labels.astype(np.float32)


def boundary_band(labels: np.ndarray, width: int = BOUNDARY_WIDTH) -> np.ndarray:
    """uint8 {0, 1}: the pixels with a pixel of another label (background included) within `width` pixels
    (a (2 width + 1)-square window); background pixels count only when a stone is that close."""
    if width < 1:
        raise ValueError(f"the boundary band is at least 1 pixel wide, got {width}")
    morph = _as_morphology_labels(labels)
    window = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    # Where the window's largest and smallest labels differ, some pixel of another label is near.
    # OpenCV's default border leaves both unchanged at the photo's edge: the edge itself is no boundary.
    return (cv2.dilate(morph, window) != cv2.erode(morph, window)).view(np.uint8)


def normalised_distance(labels: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: each stone pixel's Euclidean distance to the nearest pixel outside its own stone
    (background or another stone), over the stone's largest such distance; 0 on the background. A pixel next
    to another stone's is 1 pixel from the edge, as one next to the background is. The photo's edge is no
    edge of a stone (it goes on beyond it): a stone cut by it peaks where its visible part is widest."""
    height, width = labels.shape
    distance = np.zeros(labels.shape, np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # The box and one pixel around it, within the photo: its pixels of other labels are the stone's edge.
        rows = slice(max(box[0].start - 1, 0), min(box[0].stop + 1, height))
        columns = slice(max(box[1].start - 1, 0), min(box[1].stop + 1, width))
        stone = (labels[rows, columns] == index).view(np.uint8)
        own = cv2.distanceTransform(stone, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        peak = own.max()
        if peak > height + width:  # no pixel outside the stone in sight: the stone is the whole photo
            own, peak = stone.astype(np.float32), 1.0
        inside = stone > 0
        distance[rows, columns][inside] = own[inside] / peak
    return distance


def encode_distance(distance: np.ndarray) -> np.ndarray:
    """uint8 0..255 of a [0, 1] distance map, rounded (the stored form; decoded as value / 255)."""
    return np.rint(np.clip(distance, 0, 1) * DISTANCE_LEVELS).astype(np.uint8)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels at (height, width) by nearest-neighbour resampling, as int32 (labels never blend)."""
    if labels.shape == tuple(size):
        return labels.astype(np.int32, copy=False)
    resized = cv2.resize(_as_morphology_labels(labels), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return resized.astype(np.int32)


def records_targets(labels: np.ndarray, size: tuple[int, int], mask: np.ndarray,
                    width: int = BOUNDARY_WIDTH) -> dict[str, np.ndarray]:
    """{"boundary", "distance"} uint8 targets at a record's (height, width) `size` from a photo's full-size
    instance labels, kept consistent with the record's {0, 1} `mask` (made from the same photo by an area
    resize, so a few edge pixels differ from the nearest-resized labels): labels outside the mask are
    dropped, and mask pixels without a label are band (they are edge pixels) with distance 0."""
    small = resize_labels(labels, size) * (mask > 0)
    band = boundary_band(small, width)
    band[(mask > 0) & (small == 0)] = 1
    return {"boundary": band, "distance": encode_distance(normalised_distance(small))}
