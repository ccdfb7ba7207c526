"""Measuring stones: probabilities or a mask → instances → per-stone rows → size distribution.

Pure functions on arrays (labels in, labels out; tables in, numbers out): reading photos, writing
files and command lines live in `stoneseg.predict` and `stoneseg.evaluate`, which both use this module.

- `split_stones`: a mask (or probability map) at the photo's full size → instance labels, touching
  stones separated by a distance-transform watershed with seeds at least `min_distance` apart, pieces
  joined by a wide neck merged back.
- `stone_regions`: a mask → its 8-connected regions unsplit (the count before splitting, for comparison).
- `true_stones`: a true mask → its 8-connected regions (the true masks separate touching stones
  with thin background gaps, so each region is one stone).
- `measure_stones`: labels → `StoneTable`, one row per stone (centroid, area, equivalent-circle
  diameter, ellipse axes, touches_edge; in pixels, and in millimetres given mm per pixel).
- `size_distribution`: tables → cumulative percent passing, by area or by count; `size_values`: its
  D values (D10/D50/D80 or any percents) with bootstrap confidence intervals; `size_curve_png` draws
  the curve, the D values and the intervals' band.
- `compare_instances` / `instance_scores`: predicted vs true instances, matched one-to-one at
  IoU >= 0.5, per photo or pooled over photos.
- `encode_instances_png` / `decode_instances_png` (16-bit labels, 0 = background), `draw_stones`
  (each stone outlined in its own colour), and `border_weights` (the U-Net paper's weight map).
"""

import io as bytes_io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

# A region counts as a stone when it covers at least this share of the photo: 1,661 pixels (about 41 x 41)
# of a 3456 x 4806 photo, 26 pixels of a 512 x 512 one. Smaller specks are noise at the model's
# resolution. 219 of stones20's 6,235 true stones (3.5 %) are smaller; they still count as true stones.
MIN_STONE_FRACTION = 1e-4
# The split's three settings, measured by bench/split_stones.py on stones20's 17 photos outside the test
# split, with the true masks merged the way models at three resolutions merge touching stones (docs/stones.md,
# "Measuring stones"). Seeds of the watershed are at least MIN_DISTANCE_FRACTION of the photo's shorter
# side apart (5 px of a 512 px photo, 35 px of a 3456 x 4806 one) ...
MIN_DISTANCE_FRACTION = 0.01
# ... and two neighbouring pieces are merged back when the neck between them is at least NECK_RATIO times
# as wide as the narrower piece (see `_merge_wide_necks`).
NECK_RATIO = 0.85
# The split runs on the mask area-reduced by a whole factor to at most this many pixels; the labels are then
# brought back to the full-size mask. A whole 3456 x 4806 photo took the watershed 8.4 s; at this size the
# smallest stone (MIN_STONE_FRACTION) is still about 7 pixels across, and stones20 scores as at full size.
WORK_PIXELS = 500_000
# Size distributions weigh each stone by its area unless asked otherwise (see `size_distribution`).
DEFAULT_WEIGHTING = "area"
WEIGHTINGS = ("area", "count")
UNITS = ("mm", "px")
# The D values reported unless asked otherwise (sieve practice; P80 in mineral processing). River surveys
# ask for 16, 50, 84 and 96.
DEFAULT_PERCENTS = (10.0, 50.0, 80.0)
# Each D value's confidence interval: a percentile bootstrap over the stones (see `size_values`). 1,000
# resamples: the count Efron & Tibshirani (An Introduction to the Bootstrap, 1993) advise for percentile
# intervals, whose ends are tail quantiles and need many more resamples than a standard error's 200.
DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
BOOTSTRAP_CELLS = 4_000_000  # resamples x stones at a time: a few 32 MB arrays
MAX_BLOCK_RESAMPLES = 10_000
ROW_SHIFT = 128.0  # > 100 percent: resamples laid end to end stay ascending (a power of two: exact sums)
CURVE_BAND_PERCENTS = tuple(float(percent) for percent in range(1, 100))
D_COLOURS = ("#2a9d4b", "#d1495b", "#e39b17", "#7b4fa0", "#17a2b8", "#8c564b")
MATCH_IOU = 0.5
MAX_LABEL_16BIT = 65535

_MATPLOTLIB = threading.Lock()

PIXEL_COLUMNS = ("id", "centroid_x", "centroid_y", "area_px", "diameter_px", "major_axis_px", "minor_axis_px",
                 "touches_edge")
MM_COLUMNS = ("area_mm2", "diameter_mm", "major_axis_mm", "minor_axis_mm")
WHOLE_COLUMNS = ("id", "area_px", "touches_edge")


# ----------------------------------------------------------------------------- instances
def stone_mask(stones: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 {0, 1} mask of a probability map (stone where >= threshold) or of a mask (stone where nonzero)."""
    stones = np.asarray(stones)
    if stones.ndim != 2:
        raise ValueError(f"expected one (height, width) map, got an array of shape {stones.shape}")
    if np.issubdtype(stones.dtype, np.floating):
        return (stones >= threshold).view(np.uint8)
    if stones.dtype == np.uint8:
        return cv2.threshold(stones, 0, 1, cv2.THRESH_BINARY)[1]
    return (stones != 0).view(np.uint8)


def default_min_distance(shape: tuple[int, ...]) -> float:
    """The default seed distance in pixels for a photo of `shape` (height, width): MIN_DISTANCE_FRACTION of
    its shorter side."""
    return MIN_DISTANCE_FRACTION * min(shape[:2])


def work_factor(shape: tuple[int, ...], work_pixels: int = WORK_PIXELS) -> int:
    """The smallest whole factor that reduces a (height, width) image to at most `work_pixels` pixels."""
    height, width = shape[:2]
    factor = max(1, math.floor(math.sqrt(height * width / work_pixels)))
    while math.ceil(height / factor) * math.ceil(width / factor) > work_pixels:
        factor += 1
    return factor


def split_stones(stones: np.ndarray, min_distance: float | None = None, *, neck_ratio: float | None = NECK_RATIO,
                 threshold: float = 0.5, min_area: float | None = None, work_pixels: int = WORK_PIXELS,
                 return_boxes: bool = False):
    """Instance labels (uint16, same shape, 0 = background, stones 1..n) of a stone mask or probability map;
    with `return_boxes`, (labels, boxes): each stone's bounding box as a (rows, columns) pair of slices,
    at most one working cell larger than tight, for `measure_stones(labels, boxes=boxes)` (it then skips
    its own pass over the whole photo, the larger part of its time on a 3456 x 4806 photo).

    Touching stones that the mask joins are separated by a watershed on the distance to the background,
    flooded from seeds: the local maxima of that distance within a square of side 2 * min_distance + 1,
    so seeds are at least `min_distance` pixels apart (Chebyshev distance; exactly tied plateaus
    excepted). `min_distance` is in pixels of `stones`; None means `default_min_distance`. Then
    neighbouring pieces joined by a wide neck, at least `neck_ratio` times as wide as the narrower piece,
    are merged back (touching stones meet in a narrow neck; None: no merging). A connected region with
    fewer than two seeds stays whole. Stones smaller than `min_area` pixels (default MIN_STONE_FRACTION
    of the photo) are dropped: background in the labels, though still in the mask.

    Large photos are split at a reduced size (WORK_PIXELS, `work_factor`): the mask is area-reduced by a
    whole factor f (a cell is stone when half of it or more is), split there, and the labels are
    scaled back by repeating each cell f x f times and cut to the full-size mask, with the mask's pixels
    in the cells just outside a stone given to that stone. So every labelled pixel is a mask pixel, all
    but specks of the mask are labelled, and cut lines between touching stones sit to within f pixels.

    A mask that is one huge region is split like any other. ValueError for a mask with no background
    pixel at all (no distance to measure from: such a mask is almost always inverted or broken) and for
    more than 65,535 stones (the 16-bit label limit).
    """
    mask = stone_mask(stones, threshold)
    height, width = mask.shape
    if not mask.any():
        labels = np.zeros((height, width), np.uint16)
        return (labels, []) if return_boxes else labels
    if mask.all():
        raise ValueError("the mask is stone everywhere: with no background there is nothing to separate stones "
                         "by (is the mask inverted?)")
    min_distance = default_min_distance(mask.shape) if min_distance is None else float(min_distance)
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    min_area = MIN_STONE_FRACTION * height * width if min_area is None else float(min_area)

    factor = work_factor(mask.shape, work_pixels)
    work = mask if factor == 1 else _reduce(mask, factor)
    distance = cv2.distanceTransform(work, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # to the nearest background pixel
    labels = _watershed_split(work, distance, max(1, round(min_distance / factor)))
    if neck_ratio is not None:
        labels = _merge_wide_necks(labels, distance, neck_ratio)
    labels = _drop_small(labels, min_area / factor**2)
    boxes = ndimage.find_objects(labels) if return_boxes else []
    if factor > 1:
        labels = _fit_to_mask(labels, mask, factor)
        boxes = [(_grow(rows, factor, height), _grow(columns, factor, width)) for rows, columns in boxes]
    return (labels, boxes) if return_boxes else labels


def _grow(cells: slice, factor: int, size: int) -> slice:
    """The pixels of a run of working cells and of the cell on either side (where `_fit_to_mask` may extend
    a stone)."""
    return slice(max((cells.start - 1) * factor, 0), min((cells.stop + 1) * factor, size))


def _reduce(mask: np.ndarray, factor: int) -> np.ndarray:
    """The {0, 1} mask area-reduced by `factor`: a cell is stone when half of it or more is (OpenCV rounds
    the mean). The mask is first padded with background to whole cells, for OpenCV's fast box average."""
    height, width = mask.shape
    if height % factor or width % factor:
        mask = cv2.copyMakeBorder(mask, 0, -height % factor, 0, -width % factor, cv2.BORDER_CONSTANT, value=0)
    size = (mask.shape[1] // factor, mask.shape[0] // factor)
    return cv2.resize(mask, size, interpolation=cv2.INTER_AREA)  # the rounded mean of 0s and 1s


def _watershed_split(mask: np.ndarray, distance: np.ndarray, min_distance: int) -> np.ndarray:
    """int32 labels of `mask`: each 8-connected region with two seeds or more split by a watershed of the
    negated `distance` to the background (scikit-image), the others whole."""
    window = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * min_distance + 1, 2 * min_distance + 1))
    peaks = (distance == cv2.dilate(distance, window)) & (mask > 0)
    seed_count, seeds = cv2.connectedComponents(peaks.view(np.uint8), connectivity=8)  # a plateau is one seed
    region_count, labels, boxes, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    region_of_seed = np.zeros(seed_count, np.int64)
    region_of_seed[seeds[peaks]] = labels[peaks]
    seeds_per_region = np.bincount(region_of_seed[1:], minlength=region_count)
    for region in np.flatnonzero(seeds_per_region >= 2):
        x, y, w, h = boxes[region, :4]
        box = (slice(y, y + h), slice(x, x + w))
        inside = labels[box] == region
        split = watershed(-distance[box], np.where(inside, seeds[box], 0), mask=inside, connectivity=2)
        labels[box][inside] = region_count + split[inside]  # seed ids are unique: new labels
    return labels


def _merge_wide_necks(labels: np.ndarray, distance: np.ndarray, neck_ratio: float) -> np.ndarray:
    """`labels` with neighbouring regions merged where the neck joining them is at least `neck_ratio` times
    as wide as the narrower of the two.

    A region's width is its largest distance to the background (the radius of the largest disc inside
    it), a neck's the largest distance along the two regions' common border. Two touching stones meet
    in a narrow neck; a stone that the watershed cut in two (a bump, an elongated stone) has a wide one.
    Pairs are merged widest neck first; a merged region is as wide as its widest part.
    """
    size = int(labels.max()) + 1
    first, second, necks = _neck_widths(labels, distance)
    widths = np.zeros(size)
    for index, box in enumerate(ndimage.find_objects(labels)):  # 20x faster than ndimage.maximum here
        if box is not None:
            widths[index + 1] = distance[box][labels[box] == index + 1].max()
    parent = np.arange(size)
    for pair in np.argsort(-necks, kind="stable"):
        a, b = _root(parent, first[pair]), _root(parent, second[pair])
        if a != b and necks[pair] >= neck_ratio * min(widths[a], widths[b]):
            parent[b] = a
            widths[a] = max(widths[a], widths[b])
    while not np.array_equal(parent, parent[parent]):
        parent = parent[parent]
    return parent[labels]


def _neck_widths(labels: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pair of 8-neighbouring regions (first < second): the largest min(distance) over the pairs
    of neighbouring pixels, one in each."""
    size = int(labels.max()) + 1
    keys, values = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        here, there = _neighbours(labels, dy, dx)
        near, far = _neighbours(distance, dy, dx)
        border = (here != there) & (here > 0) & (there > 0)
        low = np.minimum(here[border], there[border]).astype(np.int64)
        high = np.maximum(here[border], there[border]).astype(np.int64)
        keys.append(low * size + high)
        values.append(np.minimum(near[border], far[border]))
    keys, values = np.concatenate(keys), np.concatenate(values)
    order = np.lexsort((values, keys))  # by pair, then by width: each pair's last entry is its widest
    keys, values = keys[order], values[order]
    last = np.append(keys[1:] != keys[:-1], True) if len(keys) else np.zeros(0, bool)
    return keys[last] // size, keys[last] % size, values[last]


def _neighbours(array: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Two views of `array`: each pixel, and its neighbour (dy, dx) away (dy >= 0), where both exist."""
    height, width = array.shape
    columns = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (slice(-dx, width), slice(0, width + dx))
    return array[:height - dy, columns[0]], array[dy:, columns[1]]


def _root(parent: np.ndarray, node: int) -> int:
    """The representative of `node`'s merged set (union-find, halving the path on the way)."""
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def _drop_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """uint16 labels renumbered 1..n in order, without the regions smaller than `min_area` pixels."""
    areas = np.bincount(labels.ravel())
    keep = areas >= max(min_area, 1)
    keep[0] = False
    count = int(keep.sum())
    if count > MAX_LABEL_16BIT:
        raise ValueError(f"{count:,} stones are more than a 16-bit label image holds ({MAX_LABEL_16BIT:,})")
    renumber = np.zeros(len(areas), np.uint16)
    renumber[keep] = np.arange(1, count + 1, dtype=np.uint16)
    return renumber[labels]


def _fit_to_mask(labels: np.ndarray, mask: np.ndarray, factor: int) -> np.ndarray:
    """Reduced labels back at the mask's size: each cell repeated factor x factor times, the empty cells
    next to a stone given to it (the larger label where two meet), then cut to the mask."""
    grown = np.where(labels > 0, labels, cv2.dilate(labels, np.ones((3, 3), np.uint8)))
    height, width = mask.shape
    size = (grown.shape[1] * factor, grown.shape[0] * factor)
    full = cv2.resize(grown, size, interpolation=cv2.INTER_NEAREST)[:height, :width]
    return np.multiply(full, mask, dtype=np.uint16)


# ----------------------------------------------------------------------------- the split that follows the network
# A network with a second output (train --output boundary|distance) says itself where stones part; its maps
# are split at the network's own working resolution (the photo resized by the model's scale), so every
# setting below is in units of the stones as the network sees them and none depends on the photo's size.
#
# A stone must cover at least MIN_STONE_PIXELS pixels of the working image: 8 pixels (3.2 px across) is
# 8 / F^2 pixels at the photo's size, 32 px^2 (6.4 px across) for the default scale 0.5; stones20 has 80 true
# stones of its 6,235 below that. `min_stone_area` gives it at a photo's size.
MIN_STONE_PIXELS = 8
# Seeds: for "boundary", the stone pixels whose boundary probability is below BOUNDARY_SEED_LEVEL (the stones'
# cores, which the band keeps apart); for "distance", those whose predicted normalised distance is at least
# DISTANCE_SEED_LEVEL (the inner part of each stone, at least that share of its centre's distance from its edge).
# Chosen on the README split's 4 val photos with trained models (python -m bench.seed_levels; 10 epochs x 240
# images, seeds 1 and 2): boundary F1 0.720 / 0.718 at 0.3 against 0.683 / 0.687 at 0.5 (count error +0.5 % /
# -3.6 % against -9.6 % / -14.4 %): a trained band is soft, so only its clear cores are seeds.
BOUNDARY_SEED_LEVEL = 0.3
DISTANCE_SEED_LEVEL = 0.5
SEED_LEVELS = {"boundary": BOUNDARY_SEED_LEVEL, "distance": DISTANCE_SEED_LEVEL}
# A core of fewer working pixels than this is no seed (a ragged edge or a speck of the maps, not a stone's core).
# With perfect maps of stones20's train and val photos (python -m bench.split_targets) the boundary split's F1
# was 0.931 / 0.954 / 0.939 at 4 / 8 / 16 pixels, the distance split's 0.986 / 0.988 / 0.961.
MIN_SEED_PIXELS = 8


def min_stone_area(working_shape: tuple[int, int], photo_shape: tuple[int, int],
                   min_pixels: float = MIN_STONE_PIXELS) -> float:
    """The smallest stone the network split keeps, in pixels at the photo's size: `min_pixels` of the
    working image (the photo resized by the model's scale) scaled to the photo."""
    return min_pixels * (photo_shape[0] * photo_shape[1]) / (working_shape[0] * working_shape[1])


def split_by_network(maps: np.ndarray, output: str, *, threshold: float = 0.5, seed_level: float | None = None,
                     min_pixels: float = MIN_STONE_PIXELS, min_seed: float = MIN_SEED_PIXELS) -> np.ndarray:
    """uint16 instance labels (0 = background, stones 1..n) of a network's maps at its working resolution:
    `maps` (H, W, 2) float, channel 0 the stone probability, channel 1 the second `output` ("boundary":
    the boundary band's probability; "distance": the predicted normalised distance to the stone's edge).

    Stone pixels are those with probability >= threshold. Seeds are the 8-connected groups of stone pixels
    that the second map marks as a stone's core (`SEED_LEVELS`; `seed_level` overrides), of at least
    `min_seed` pixels. A watershed floods
    each seed through the stone pixels, uphill on the boundary probability or downhill on the distance, so
    floods from two seeds meet where the network puts a boundary. Stone regions with no seed (stones too
    small to have a core) are stones as they are. Stones smaller than `min_pixels` pixels are dropped.
    ValueError beyond 65,535 stones (the 16-bit label limit).
    """
    if maps.ndim != 3 or maps.shape[-1] != 2:
        raise ValueError(f"expected (height, width, 2) maps: the stone probability and the {output} map, got "
                         f"an array of shape {maps.shape}")
    if output not in SEED_LEVELS:
        raise ValueError(f"the network split takes a boundary or distance output, not {output!r}")
    level = SEED_LEVELS[output] if seed_level is None else float(seed_level)
    stone = maps[..., 0] >= threshold
    second = np.ascontiguousarray(maps[..., 1], np.float32)
    cores = stone & ((second < level) if output == "boundary" else (second >= level))
    _, seeds, seed_stats, _ = cv2.connectedComponentsWithStats(cores.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if min_seed > 1:
        too_small = seed_stats[:, cv2.CC_STAT_AREA] < min_seed
        too_small[0] = True  # the background stays 0
        seeds[too_small[seeds]] = 0
    region_count, regions, boxes, _ = cv2.connectedComponentsWithStats(stone.view(np.uint8), connectivity=8,
                                                                       ltype=cv2.CV_32S)
    elevation = second if output == "boundary" else -second
    labels = np.zeros(stone.shape, np.int64)
    next_label = 1
    # Region by region, in its bounding box: the watershed's cost follows the stones, not the photo.
    for region in range(1, region_count):
        x, y, w, h = boxes[region, :4]
        box = (slice(y, y + h), slice(x, x + w))
        inside = regions[box] == region
        markers = np.where(inside, seeds[box], 0)
        present = np.unique(markers[markers > 0])
        if len(present) <= 1:
            labels[box][inside] = next_label
            next_label += 1
            continue
        flooded = watershed(elevation[box], markers, mask=inside, connectivity=2)
        renumber = np.zeros(int(present.max()) + 1, np.int64)
        renumber[present] = np.arange(next_label, next_label + len(present))
        labels[box][inside] = renumber[flooded[inside]]
        next_label += len(present)
    return _drop_small(labels, min_pixels)


def labels_at_size(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Working-resolution `labels` brought to the full-size 0/255 (or 0/1) `mask`'s size: the background
    cells next to a stone given to it (the larger label where two meet), resampled nearest, then cut to the
    mask. Every labelled pixel is a mask pixel, and cut lines sit to within a working pixel."""
    height, width = mask.shape
    morph = labels.astype(np.uint16 if labels.max(initial=0) <= MAX_LABEL_16BIT else np.float32)
    grown = np.where(morph > 0, morph, cv2.dilate(morph, np.ones((3, 3), np.uint8)))
    full = cv2.resize(grown, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.where(mask > 0, full, 0).astype(np.uint16)


def stones_of(maps: np.ndarray, mask: np.ndarray, output: str, min_distance_fraction: float = MIN_DISTANCE_FRACTION,
              seed_level: float | None = None, threshold: float = 0.5) -> np.ndarray:
    """uint16 instance labels at the full-size `mask`'s size from a network's working-resolution `maps`
    (H, W, C; channel 0 the stone probability) and that mask (the probability upsampled and thresholded):
    for a binary network the mask split by its geometry (`split_stones`, seeds `min_distance_fraction` of
    the shorter side apart, as before instance outputs); for a boundary or distance network the split
    that follows its second map (`split_by_network`, `seed_level`), brought to the mask's size."""
    if output == "binary":
        return split_stones(mask, min_distance_fraction * min(mask.shape))
    return labels_at_size(split_by_network(maps, output, threshold=threshold, seed_level=seed_level), mask)


def stone_regions(stones: np.ndarray, threshold: float = 0.5, min_area: float | None = None) -> np.ndarray:
    """uint16 labels of a mask's (or probability map's) 8-connected regions as they are, touching stones
    not separated: what `split_stones` improves on, kept to score it against. Regions smaller than
    `min_area` pixels (default MIN_STONE_FRACTION of the photo) are dropped, as `split_stones` drops them."""
    mask = stone_mask(stones, threshold)
    min_area = MIN_STONE_FRACTION * mask.size if min_area is None else float(min_area)
    return _drop_small(true_stones(mask), min_area)


def true_stones(mask: np.ndarray) -> np.ndarray:
    """int32 labels of a true mask's 8-connected stone regions (nonzero = stone; stoneseg.io's masks are
    already thresholded at 127), one region per stone."""
    _, labels = cv2.connectedComponents(stone_mask(mask), connectivity=8, ltype=cv2.CV_32S)
    return labels


# ----------------------------------------------------------------------------- the per-stone table
@dataclass(frozen=True)
class StoneTable:
    """One row per stone; `columns` maps PIXEL_COLUMNS (and MM_COLUMNS when mm_per_pixel is given) to arrays.

    id: the stone's label. centroid_x, centroid_y: mean pixel position (x right, y down, pixel centres,
    the top-left pixel at (0, 0)). area_px: pixel count. diameter_px: equivalent-circle diameter,
    sqrt(4 * area / pi). major_axis_px, minor_axis_px: full axis lengths of the ellipse with the same
    second moments as the stone's pixel centres (4 * sqrt of the covariance's eigenvalues; scikit-image's
    axis_major_length). touches_edge: 1 if the stone has a pixel on the photo's border (it is truncated),
    else 0. The *_mm columns are the same lengths times mm_per_pixel, area times its square.
    """
    columns: dict
    mm_per_pixel: float | None = None

    def __len__(self) -> int:
        return len(self.columns["id"])

    def csv(self) -> bytes:
        """The table as CSV text (header, then one line per stone)."""
        names = list(self.columns)
        lines = [",".join(names)]
        for row in zip(*(self.columns[name] for name in names)):
            lines.append(",".join(_csv_value(name, value) for name, value in zip(names, row)))
        return ("\n".join(lines) + "\n").encode()

    def records(self) -> list[dict]:
        """The rows as {column: value}, with the values `csv` writes (whole columns as int, the others as the
        float of their CSV text), for formats that carry each stone's row (stoneseg.geojson)."""
        names = list(self.columns)
        return [{name: int(value) if name in WHOLE_COLUMNS else float(_csv_value(name, value))
                 for name, value in zip(names, row)} for row in zip(*(self.columns[name] for name in names))]


def _csv_value(name: str, value) -> str:
    if name in WHOLE_COLUMNS:
        return str(int(value))
    return f"{value:.6g}" if name.endswith("_mm") or name.endswith("_mm2") else f"{value:.2f}"


def measure_stones(labels: np.ndarray, mm_per_pixel: float | None = None, boxes: Sequence | None = None) -> StoneTable:
    """The per-stone table of an instance label image (0 = background; any nonnegative integer labels).

    Each stone is measured in its bounding box with OpenCV's image moments. The boxes come from
    scipy.ndimage.find_objects (one pass over the image), or from `boxes`: for each label 1, 2, ... a
    (rows, columns) pair of slices holding all of its pixels, or None (as `split_stones` returns them).
    mm_per_pixel, when given, must be > 0 (ValueError otherwise).
    """
    if mm_per_pixel is not None and not mm_per_pixel > 0:
        raise ValueError(f"mm per pixel must be greater than 0, got {mm_per_pixel}")
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected a (height, width) integer label image, got {labels.dtype} {labels.shape}")
    if labels.dtype.itemsize > 4 or labels.dtype == np.uint32:
        labels = labels.astype(np.int32)  # find_objects takes at most 32-bit signed labels
    rows = []
    for index, box in enumerate(ndimage.find_objects(labels) if boxes is None else boxes):
        if box is None:
            continue
        moments = cv2.moments((labels[box] == index + 1).view(np.uint8), binaryImage=True)
        if not moments["m00"]:
            continue
        area = moments["m00"]
        a, b, c = moments["mu20"] / area, moments["mu11"] / area, moments["mu02"] / area
        spread = math.sqrt(((a - c) / 2) ** 2 + b**2)
        rows.append((index + 1, box[1].start + moments["m10"] / area, box[0].start + moments["m01"] / area, area,
                     math.sqrt(4 * area / math.pi), 4 * math.sqrt((a + c) / 2 + spread),
                     4 * math.sqrt(max((a + c) / 2 - spread, 0.0))))
    on_edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    values = np.array(rows, np.float64).reshape(-1, 7)
    columns = {name: values[:, column] for column, name in enumerate(PIXEL_COLUMNS[:-1])}
    columns["id"] = columns["id"].astype(np.int64)
    columns["area_px"] = columns["area_px"].astype(np.int64)
    columns["touches_edge"] = np.isin(columns["id"], on_edge).astype(np.int64)
    if mm_per_pixel is not None:
        for name in MM_COLUMNS:
            area = name.endswith("_mm2")
            columns[name] = columns[name.rsplit("_", 1)[0] + "_px"] * (mm_per_pixel**2 if area else mm_per_pixel)
    return StoneTable(columns, mm_per_pixel)


# ----------------------------------------------------------------------------- the size distribution
@dataclass(frozen=True)
class Distribution:
    """A cumulative size distribution: `passing[i]` percent of the material (by area or by count) is no
    larger than `sizes[i]` (ascending); `weights[i]` is that stone's weight (its area in `unit`, or 1).
    Empty when no stone was measured; then the D values are None."""
    sizes: np.ndarray
    passing: np.ndarray
    by: str
    unit: str
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def size_passing(self, percent: float) -> float | None:
        """The size that `percent` % of the material is finer than, read off the curve through the points
        (size, percent passing), straight between points on a log size axis; below the first point, the
        smallest size. None for an empty distribution."""
        if not len(self.sizes):
            return None
        return float(np.exp(np.interp(percent, self.passing, np.log(self.sizes))))

    @property
    def d10(self) -> float | None:
        return self.size_passing(10)

    @property
    def d50(self) -> float | None:
        return self.size_passing(50)

    @property
    def d80(self) -> float | None:
        return self.size_passing(80)


def size_distribution(tables: StoneTable | Sequence[StoneTable], by: str = DEFAULT_WEIGHTING,
                      include_edge: bool = False, unit: str | None = None) -> Distribution:
    """The cumulative percent-passing curve of the stones' equivalent-circle diameters, pooled over `tables`.

    by="area" (the default) weighs each stone by its area, as sieve analysis weighs by mass: that
    assumes a stone's mass is proportional to its visible area (a single layer of similar thickness).
    It is also the robust choice for an image: the many smallest stones, whose number depends most on
    what a model finds at its resolution and on the minimum stone size, move a by-count D50 far more
    than a by-area one. by="count" weighs every stone the same (a Wolman-style grain count).

    Stones touching the photo's edge are left out unless `include_edge`, because they are truncated.
    unit: "mm" or "px"; None means mm when every table has millimetres, else pixels.
    """
    tables = [tables] if isinstance(tables, StoneTable) else list(tables)
    if by not in WEIGHTINGS:
        raise ValueError(f"by must be one of {', '.join(WEIGHTINGS)}, got {by!r}")
    has_mm = bool(tables) and all(table.mm_per_pixel is not None for table in tables)
    unit = ("mm" if has_mm else "px") if unit is None else unit
    if unit not in UNITS or (unit == "mm" and not has_mm):
        raise ValueError(f"unit must be 'px', or 'mm' when every table has millimetres; got {unit!r}")
    size_column, area_column = ("diameter_mm", "area_mm2") if unit == "mm" else ("diameter_px", "area_px")
    sizes, weights = [], []
    for table in tables:
        keep = np.ones(len(table), bool) if include_edge else table.columns["touches_edge"] == 0
        sizes.append(table.columns[size_column][keep])
        weights.append(table.columns[area_column][keep] if by == "area" else np.ones(int(keep.sum())))
    sizes = np.concatenate(sizes) if sizes else np.zeros(0)
    weights = np.concatenate(weights).astype(np.float64) if weights else np.zeros(0)
    order = np.argsort(sizes, kind="stable")
    sizes, weights = sizes[order], weights[order]
    passing = 100 * np.cumsum(weights) / weights.sum() if len(weights) else np.zeros(0)
    return Distribution(sizes.astype(np.float64), passing, by, unit, weights)


# ----------------------------------------------------------------------------- D values and their intervals
def parse_percents(text: str) -> tuple[float, ...]:
    """The D values asked for, e.g. "16,50,84,96" -> (16.0, 50.0, 84.0, 96.0), ascending. ValueError (its
    message for a command line) for a value that is not a number strictly between 0 and 100, or repeated.
    D0 and D100 are left out: they are the smallest and the largest single stone, which a resample of the
    stones can only keep or lose, so the bootstrap cannot bound them."""
    percents = []
    for part in text.split(","):
        try:
            percent = float(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number (expected e.g. 16,50,84,96)") from None
        if not 0 < percent < 100:
            raise ValueError(f"{part.strip()} is not strictly between 0 and 100")
        if percent in percents:
            raise ValueError(f"{percent:g} is given twice")
        percents.append(percent)
    return tuple(sorted(percents))


def d_column(percent: float, unit: str, bound: str | None = None) -> str:
    """The name of a D value's column, with its unit: d50_mm, d16_px, and its interval's d50_mm_low,
    d50_mm_high (bound "low" or "high")."""
    return f"d{percent:g}_{unit}" + (f"_{bound}" if bound else "")


@dataclass(frozen=True)
class SizeValues:
    """D values of a distribution: `sizes[i]` is D`percents[i]` (NaN when the distribution is empty), in
    `unit`; `low[i]`..`high[i]` its bootstrap confidence interval at `level` (None when not computed)."""
    percents: np.ndarray
    sizes: np.ndarray
    unit: str
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    level: float | None = None
    resamples: int = 0

    def scaled(self, factor: float, unit: str) -> "SizeValues":
        """The same values times `factor`, in `unit` (one photo's px values to mm: every stone scales alike,
        so its D values and every resample's do too)."""
        scale = (lambda values: None if values is None else values * factor)
        return SizeValues(self.percents, self.sizes * factor, unit, scale(self.low), scale(self.high), self.level,
                          self.resamples)

    def at(self, percents: Sequence[float]) -> "SizeValues":
        """The values at `percents` (each one of `self.percents`)."""
        index = np.array([np.flatnonzero(self.percents == percent)[0] for percent in percents], np.int64)
        pick = (lambda values: None if values is None else values[index])
        return SizeValues(self.percents[index], self.sizes[index], self.unit, pick(self.low), pick(self.high),
                          self.level, self.resamples)

    def columns(self) -> dict[str, float | None]:
        """{d_column: value} for each D value and, with an interval, its low and high ends; None for NaN."""
        named = {}
        for index, percent in enumerate(self.percents):
            named[d_column(percent, self.unit)] = _number(self.sizes[index])
            if self.low is not None:
                named[d_column(percent, self.unit, "low")] = _number(self.low[index])
                named[d_column(percent, self.unit, "high")] = _number(self.high[index])
        return named


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def size_values(distribution: Distribution, percents: Sequence[float], level: float = DEFAULT_LEVEL,
                resamples: int = DEFAULT_RESAMPLES, seed=DEFAULT_SEED) -> SizeValues:
    """The D values of `distribution` at `percents`, each with a bootstrap percentile confidence interval at
    `level` (0 < level < 1) from `resamples` resamples of its stones (0: no interval), drawn with
    numpy.random.default_rng(`seed`), so the same seed gives the same interval.

    Each resample draws as many stones as the distribution has, with replacement, each keeping its size
    and weight (its area by area weighting), and reads the D values off its own curve exactly as
    `Distribution.size_passing` reads them; the interval's ends are the (1 - level) / 2 and (1 + level) / 2
    quantiles of the resampled values. The percentile interval, not BCa: BCa's acceleration comes from a
    jackknife, which is inconsistent for quantiles (a sample quantile is not smooth in the data), and a
    quantile's percentile interval needs no transformation to be right, being invariant under any
    monotone one (log or linear sizes alike). What it covers: the sampling of stones from the material
    seen, not a model's segmentation errors, nor how representative the photos are.
    """
    percents = np.asarray(percents, np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    if resamples < 0:
        raise ValueError(f"resamples must be at least 0, got {resamples}")
    empty = np.full(len(percents), np.nan)
    if not len(distribution):
        nothing = (empty, empty.copy(), level) if resamples else (None, None, None)
        return SizeValues(percents, empty, distribution.unit, *nothing, resamples)
    sizes = np.exp(np.interp(percents, distribution.passing, np.log(distribution.sizes)))
    if not resamples:
        return SizeValues(percents, sizes, distribution.unit)
    resampled = bootstrap_sizes(distribution, percents, resamples, seed)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return SizeValues(percents, sizes, distribution.unit, low, high, level, resamples)


def bootstrap_sizes(distribution: Distribution, percents: Sequence[float], resamples: int, seed=DEFAULT_SEED,
                    ) -> np.ndarray:
    """(resamples, len(percents)): the D values of `resamples` bootstrap resamples of the distribution's
    stones (see `size_values`). Vectorised: a block of resamples at a time is a matrix of how often each
    stone was drawn (BOOTSTRAP_CELLS entries at most), whose weighted cumulative sums are every resample's
    curve; 1,000 resamples of 20,000 stones take about a second."""
    count = len(distribution)
    if not count:
        raise ValueError("an empty distribution has no stones to resample")
    rng = np.random.default_rng(seed)
    percents = np.asarray(percents, np.float64)
    log_sizes = np.log(distribution.sizes)
    resampled = np.empty((resamples, len(percents)))
    block = max(1, min(BOOTSTRAP_CELLS // count, MAX_BLOCK_RESAMPLES))
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        draws = rng.integers(0, count, size=(rows, count)) + (np.arange(rows) * count)[:, None]
        drawn = np.bincount(draws.ravel(), minlength=rows * count).reshape(rows, count)
        resampled[start:start + rows] = _resampled_log_sizes(log_sizes, distribution.weights, drawn, percents)
    return np.exp(resampled)


def _resampled_log_sizes(log_sizes: np.ndarray, weights: np.ndarray, drawn: np.ndarray,
                         percents: np.ndarray) -> np.ndarray:
    """(rows, percents): the log D values of resamples that drew stone j drawn[r, j] times (rows of counts
    over the distribution's stones, ascending in size), read off each resample's curve as
    Distribution.size_passing reads the curve of those stones: a point per stone drawn (k points at one size
    for a stone drawn k times), straight on log size between points; at or below the first, its size."""
    rows, count = drawn.shape
    passing = np.cumsum(drawn * weights, axis=1)
    total = passing[:, -1:]
    passing = passing / total * 100  # the last entry exactly 100
    # Each row's first stone with passing >= percent, by one search over the rows laid end to end: row r
    # shifted up by ROW_SHIFT * r stays ascending (passing is at most 100), and so do the percents.
    shift = (np.arange(rows) * ROW_SHIFT)[:, None]
    found = np.searchsorted((passing + shift).ravel(), (percents[None, :] + shift).ravel())
    upper = np.minimum(found.reshape(rows, -1) - (np.arange(rows) * count)[:, None], count - 1)
    # The stone before it that the resample holds (stones drawn 0 times are not points of its curve).
    held = np.maximum.accumulate(np.where(drawn > 0, np.arange(count), -1), axis=1)
    row_index = np.arange(rows)[:, None]
    lower = np.where(upper > 0, held[row_index, np.maximum(upper - 1, 0)], -1)
    # A stone drawn k times is k points of the curve at its size: the curve reaches that size at its first copy.
    copies = drawn[row_index, upper]
    upper_passing = passing[row_index, upper] - (copies - 1) * weights[upper] / total * 100
    lower_passing = np.where(lower >= 0, passing[row_index, np.maximum(lower, 0)], 0.0)
    span = upper_passing - lower_passing
    along = np.clip((percents[None, :] - lower_passing) / np.where(span > 0, span, 1), 0, 1)
    lower_size = np.where(lower >= 0, log_sizes[np.maximum(lower, 0)], log_sizes[upper])
    return np.where(lower >= 0, lower_size + along * (log_sizes[upper] - lower_size), log_sizes[upper])


def curve_percents(percents: Sequence[float]) -> tuple[float, ...]:
    """Where a size curve's band is computed: every whole percent from 1 to 99 and the D values asked for,
    so the band at a D value's percent is exactly that D value's interval."""
    return tuple(sorted(set(CURVE_BAND_PERCENTS) | {float(percent) for percent in percents}))


def size_curve_png(distribution: Distribution, title: str = "", percents: Sequence[float] = DEFAULT_PERCENTS,
                   band: SizeValues | None = None) -> bytes | None:
    """A PNG of the percent-passing curve on a log size axis with the D values at `percents` marked and, given
    `band` (size_values over `curve_percents(percents)`, with intervals), its confidence band shaded: at each
    percent, the interval of the size that percent of the material is finer than, so the band's width at
    D50's height is D50's interval. None when the distribution is empty (no stone to draw). Safe to call from
    several threads: matplotlib is not thread-safe (its font objects are shared), so drawings take turns."""
    if not len(distribution):
        return None
    with _MATPLOTLIB:
        return _draw_curve(distribution, title, percents, band)


def _draw_curve(distribution: Distribution, title: str, percents: Sequence[float], band: SizeValues | None) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: only this function draws
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.09, right=0.97, bottom=0.12, top=0.92)  # fixed: tight_layout costs ~5x the plot
    axes = figure.add_subplot()
    shaded = band is not None and band.low is not None
    if shaded:
        axes.fill_betweenx(band.percents, band.low, band.high, color="#1f5fa8", alpha=0.18, linewidth=0,
                           label=f"{band.level:.0%} confidence band (bootstrap, {band.resamples} resamples)")
    axes.plot(distribution.sizes, distribution.passing, color="#1f5fa8", linewidth=1.8,
              marker="." if len(distribution) < 50 else None)
    axes.set_xscale("log")
    for set_formatter in (axes.xaxis.set_major_formatter, axes.xaxis.set_minor_formatter):
        set_formatter(LogFormatter(labelOnlyBase=False))  # 20, 30, 100 rather than 2 x 10^1 ...: sizes read off
    axes.set_ylim(0, 100)
    axes.grid(True, which="both", color="#dddddd", linewidth=0.6)
    for index, percent in enumerate(percents):
        colour = D_COLOURS[index % len(D_COLOURS)]
        size = distribution.size_passing(percent)
        label = f"D{percent:g} = {size:.3g} {distribution.unit}"
        if shaded and np.any(band.percents == percent):
            ends = band.at([percent])
            label += f" ({ends.low[0]:.3g}-{ends.high[0]:.3g})"
        axes.axhline(percent, color=colour, linewidth=0.8, linestyle=":")
        axes.axvline(size, color=colour, linewidth=1.0, linestyle="--", label=label)
    axes.set_xlabel(f"equivalent-circle diameter ({distribution.unit}, log scale)")
    axes.set_ylabel(f"percent passing (by {distribution.by})")
    axes.set_title(f"{title}{' - ' if title else ''}{len(distribution)} stones", fontsize=10)
    axes.legend(loc="upper left", fontsize=8 if len(percents) > 3 or shaded else None)  # above the curve: empty
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- instance scores
@dataclass(frozen=True)
class InstanceComparison:
    """Predicted vs true instances of one photo: the counts, the one-to-one matches, and both tables."""
    true_count: int
    predicted_count: int
    matched: int
    true_stones: StoneTable
    predicted_stones: StoneTable
    left_out: int = 0  # true stones below the smallest that can be found, not counted at all


def match_instances(true_labels: np.ndarray, predicted_labels: np.ndarray, min_iou: float = MATCH_IOU) -> int:
    """How many true and predicted instances pair up one-to-one with IoU >= min_iou (greedy, best IoU
    first; above 0.5 a stone can overlap that much with only one other, so the pairing is unique)."""
    if true_labels.shape != predicted_labels.shape:
        raise ValueError(f"label images differ in shape: {true_labels.shape} vs {predicted_labels.shape}")
    truth, predicted = true_labels.ravel().astype(np.int64), predicted_labels.ravel().astype(np.int64)
    both = (truth > 0) & (predicted > 0)
    width = int(predicted.max()) + 1
    pairs, overlap = np.unique(truth[both] * width + predicted[both], return_counts=True)
    true_index, predicted_index = np.divmod(pairs, width)
    union = np.bincount(truth)[true_index] + np.bincount(predicted)[predicted_index] - overlap
    iou = overlap / union
    candidates = np.flatnonzero(iou >= min_iou)
    used_true, used_predicted = set(), set()
    for candidate in candidates[np.argsort(-iou[candidates], kind="stable")]:
        t, p = int(true_index[candidate]), int(predicted_index[candidate])
        if t not in used_true and p not in used_predicted:
            used_true.add(t)
            used_predicted.add(p)
    return len(used_true)


def compare_instances(true_labels: np.ndarray, predicted_labels: np.ndarray, min_iou: float = MATCH_IOU,
                      min_true_area: float = 0) -> InstanceComparison:
    """Match one photo's predicted instances to its true ones and measure both. True stones smaller than
    `min_true_area` pixels (smaller than the split can find) are left out: neither found nor missed."""
    left_out = 0
    if min_true_area > 0:
        areas = np.bincount(true_labels.ravel())
        small = np.flatnonzero(areas < min_true_area)
        small = small[(small > 0) & (areas[small] > 0)]
        if len(small):
            left_out = len(small)
            true_labels = np.where(np.isin(true_labels, small), 0, true_labels)
    truth, predicted = measure_stones(true_labels), measure_stones(predicted_labels)
    return InstanceComparison(len(truth), len(predicted), match_instances(true_labels, predicted_labels, min_iou),
                              truth, predicted, left_out)


def instance_scores(comparisons: InstanceComparison | Sequence[InstanceComparison], by: str = DEFAULT_WEIGHTING,
                    include_edge: bool = False) -> dict:
    """Counts, precision, recall and F1 of the matches, and the relative errors of D50 and D80, for one
    photo or pooled over several (summed counts, one distribution of all their stones).

    A ratio whose denominator is 0 is 1.0, as in stoneseg.evaluate (nothing to find and nothing found).
    A D error is (predicted - true) / true, None when either side has no stone in its distribution.
    """
    comparisons = [comparisons] if isinstance(comparisons, InstanceComparison) else list(comparisons)
    true_count = sum(c.true_count for c in comparisons)
    predicted_count = sum(c.predicted_count for c in comparisons)
    matched = sum(c.matched for c in comparisons)
    truth = size_distribution([c.true_stones for c in comparisons], by, include_edge, unit="px")
    predicted = size_distribution([c.predicted_stones for c in comparisons], by, include_edge, unit="px")
    return {
        "true_count": true_count,
        "true_left_out": sum(c.left_out for c in comparisons),
        "predicted_count": predicted_count,
        "precision": matched / predicted_count if predicted_count else 1.0,
        "recall": matched / true_count if true_count else 1.0,
        "f1": 2 * matched / (true_count + predicted_count) if true_count + predicted_count else 1.0,
        "d50_relative_error": _relative_error(predicted.d50, truth.d50),
        "d80_relative_error": _relative_error(predicted.d80, truth.d80),
    }


def _relative_error(predicted: float | None, truth: float | None) -> float | None:
    return None if predicted is None or truth is None else (predicted - truth) / truth


# ----------------------------------------------------------------------------- images
def encode_instances_png(labels: np.ndarray) -> bytes:
    """16-bit single-channel PNG bytes of instance labels (0 = background, at most 65,535)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected a (height, width) integer label image, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL_16BIT):
        raise ValueError(f"labels must be 0..{MAX_LABEL_16BIT} for a 16-bit PNG, got {labels.min()}..{labels.max()}")
    ok, buffer = cv2.imencode(".png", labels.astype(np.uint16, copy=False))
    if not ok:
        raise ValueError(f"OpenCV could not PNG-encode labels of shape {labels.shape}")
    return buffer.tobytes()


def decode_instances_png(data: bytes) -> np.ndarray:
    """The uint16 labels of a PNG written by `encode_instances_png`."""
    labels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if labels is None or labels.ndim != 2 or labels.dtype != np.uint16:
        raise ValueError("not a 16-bit single-channel PNG of instance labels")
    return labels


def stone_colours(count: int = 256) -> np.ndarray:
    """`count` RGB uint8 colours; consecutive ones differ in hue by the golden angle, so neighbouring
    stones (which often have close ids) get clearly different colours."""
    hues = (np.arange(count) * 137.508) % 360 / 2  # OpenCV's 8-bit hue is 0..179
    hsv = np.stack([hues, np.full(count, 220), np.full(count, 255)], axis=-1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_stones(photo: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The RGB photo with each stone outlined in its own colour, inside the stone (so the outlines of
    touching stones sit side by side); line width scaled to the photo."""
    if photo.shape[:2] != labels.shape:
        raise ValueError(f"photo {photo.shape[:2]} and labels {labels.shape} differ in size")
    labels = labels.astype(np.uint16, copy=False) if labels.max(initial=0) <= MAX_LABEL_16BIT else \
        labels.astype(np.float32)  # cv2 morphology takes 16-bit or float labels, not 32-bit integers
    width = max(1, round(min(labels.shape) / 500))
    window = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * width + 1, 2 * width + 1))
    edge = ((cv2.dilate(labels, window) != labels) | (cv2.erode(labels, window) != labels)) & (labels > 0)
    overlay = photo.copy()
    palette = stone_colours()
    overlay[edge] = palette[labels[edge].astype(np.int64) % len(palette)]
    return overlay


# ----------------------------------------------------------------------------- the U-Net border weights
def border_weights(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0, balance: bool = True) -> np.ndarray:
    """The U-Net paper's weight map (Ronneberger et al. 2015), float32 of the mask's shape:

        w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

    d1, d2: distances to the nearest and second-nearest stone (the mask's 8-connected regions); the
    second term is added on background pixels only, so it is large in the thin gaps between stones.
    w_c: with `balance`, total pixels / (2 * pixels of the pixel's class), so stone and background carry
    equal total weight (1 everywhere when one class is absent); without it, 1. Distances are computed
    within 4 sigma of each stone: beyond that the term is below w0 * exp(-8), 0.0034 for w0 = 10.

    Tried as a weight on the training loss (docs/stones.md): the network kept the gaps, but the
    instance F1 did not improve, so no training option uses it.
    """
    stones = true_stones(mask)
    height, width = stones.shape
    weights = np.ones((height, width), np.float32)
    stone_pixels = int(np.count_nonzero(stones))
    if balance and 0 < stone_pixels < stones.size:
        weights[:] = stones.size / (2 * (stones.size - stone_pixels))
        weights[stones > 0] = stones.size / (2 * stone_pixels)
    reach = int(math.ceil(4 * sigma))
    nearest = np.full((height, width), np.inf, np.float32)
    second = np.full((height, width), np.inf, np.float32)
    for index, box in enumerate(ndimage.find_objects(stones)):
        if box is None:
            continue
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        columns = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        distance = cv2.distanceTransform((stones[rows, columns] != index + 1).view(np.uint8), cv2.DIST_L2,
                                         cv2.DIST_MASK_PRECISE)
        near, far = nearest[rows, columns], second[rows, columns]
        np.minimum(far, np.maximum(near, distance), out=far)
        np.minimum(near, distance, out=near)
    border = w0 * np.exp(-((nearest + second) ** 2) / (2 * sigma**2))
    weights += np.where(stones == 0, border, 0).astype(np.float32)
    return weights
