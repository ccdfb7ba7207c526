"""Stones as polygons a GIS opens (QGIS, GDAL/OGR): GeoJSON, one Feature per stone, its geometry traced
along the pixel edges of its label, its properties its row of the stone table (stoneseg.stones.StoneTable).

- `stone_polygons`: an instance label image → each stone's rings (outer ring and holes) in pixel corners.
- `stone_features`: labels and their stone table → GeoJSON Feature dicts, one per stone, in pixel or map
  coordinates; a crop of a larger raster (a mosaic's window) says where it sits and how its labels map to
  the table's ids (`origin`, `id_offset`), so a mosaic's features come a window at a time.
- `feature_collection`: a writer that streams features into a FeatureCollection under a temporary name and
  renames it into place when the block ends (nothing half-written is ever at the path).
- `write_stones_geojson`: one photo's NAME_stones.geojson.

Coordinates. Pixel (row r, column c) is the square from corner (c, r) to corner (c + 1, r + 1), GDAL's
convention; the stone table's centroid_x, centroid_y count from the top-left pixel's centre, half a pixel
further in. With an affine `transform` (a rasterio/affine `Affine`, or a GDAL geotransform 6-tuple) the
corners are taken to map coordinates, x = a·c + b·r + x0, y = d·c + e·r + y0. Without one they are pixel
coordinates x = c, y = -r: QGIS places a photo that has no georeference with that very transform
(0, 1, 0, 0, 0, -1), so the polygons lie on NAME_mask.png or the photo when both are opened in QGIS.

Area. The rings run along pixel edges, so a stone's polygon area (shoelace, holes subtracted) is exactly
its pixel count, area_px, times the pixel's area |a·e - b·d| (1 in pixel coordinates). OpenCV's
findContours traces the centres of a region's boundary pixels, half a pixel inside its edge; tracing the
mask doubled in size instead puts the boundary subpixels 2c (left or top edge) and 2c + 1 (right or
bottom edge) of pixel c on either side, and ceil(u / 2) takes subpixel u to the pixel corner it borders.

Orientation (RFC 7946, 3.1.6): outer rings counterclockwise and holes clockwise, that is, positive and
negative shoelace area in the coordinates written (a north-up transform, e < 0, reverses image order, so
the rings are oriented after transforming). Stones are 8-connected: two pixels touching at a corner are
one stone, and its ring passes twice through that corner (a ring touching itself at a point). A label
with several separate parts is a MultiPolygon.

CRS. RFC 7946 removed the "crs" member (coordinates are WGS 84 longitude and latitude), which a survey's
projected or local CRS cannot use without reprojection. GDAL's GeoJSON driver, which QGIS opens GeoJSON
with, still reads the 2008 specification's member: a CRS with an EPSG code is written as GDAL writes it
itself, {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}}, and any other by its WKT
in the same place (GDAL reads any CRS text its SetFromUserInput takes; GDAL itself would drop such a CRS
on writing). Checked with GDAL 3.12 through pyogrio. Pixel coordinates get no "crs" member (GDAL then
assumes WGS 84, as for any GeoJSON without one, and QGIS overlays the photo given the same default).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from stoneseg.files import partial_path
from stoneseg.stones import StoneTable

# Without a georeference: x = column, y = -row (QGIS's placement of an image with no georeference).
PIXEL_TRANSFORM = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
EPSG_CODE = re.compile(r"^\s*epsg:(\d+)\s*$", re.IGNORECASE)


# ----------------------------------------------------------------------------- geometry
def stone_polygons(labels: np.ndarray, boxes: Sequence | None = None) -> Iterator[tuple[int, list[list[np.ndarray]]]]:
    """(label, polygons) for each stone of an instance label image (0 = background), in label order: each
    polygon a list of rings, the outer one first and then its holes, each ring an (n, 2) int64 array of
    pixel corners (x = column, y = row, image order), not closed (the first corner is not repeated).
    `boxes`: each label's (rows, columns) slices as scipy.ndimage.find_objects gives them (found when None)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected a (height, width) integer label image, got {labels.dtype} {labels.shape}")
    if labels.dtype.itemsize > 4 or labels.dtype == np.uint32:
        labels = labels.astype(np.int64 if labels.max(initial=0) > np.iinfo(np.int32).max else np.int32)
    for index, box in enumerate(ndimage.find_objects(labels) if boxes is None else boxes):
        if box is None:
            continue
        stone = (labels[box] == index + 1).view(np.uint8)
        if stone.any():
            polygons = _trace(stone)
            for polygon in polygons:
                for ring in polygon:
                    ring += (box[1].start, box[0].start)
            yield index + 1, polygons


def _trace(stone: np.ndarray) -> list[list[np.ndarray]]:
    """The polygons of a {0, 1} mask along its pixel edges, in the mask's corner coordinates."""
    doubled = np.repeat(np.repeat(stone, 2, axis=0), 2, axis=1)  # findContours takes the outside as background
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rings = [_ring((contour[:, 0, :] + 1) // 2) for contour in contours]  # subpixel u -> corner ceil(u / 2)
    polygons = {}
    for index, (_, _, _, parent) in enumerate(hierarchy[0] if len(contours) else []):
        if parent < 0:
            polygons.setdefault(index, []).insert(0, rings[index])
        else:
            polygons.setdefault(int(parent), []).append(rings[index])
    return [polygon for polygon in polygons.values() if len(polygon[0]) >= 3]


def _ring(points: np.ndarray) -> np.ndarray:
    """A closed chain of corners without repeated points and without the middle points of straight runs."""
    points = points.astype(np.int64)
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    points = points[keep] if keep.any() else points[:1]
    if len(points) < 3:
        return points
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turning = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    return points[turning]


def signed_area(ring: np.ndarray) -> float:
    """The shoelace area of a ring (not closed): positive when counterclockwise with y up. Measured from the
    ring's first point, as GEOS does, so map coordinates of 10^6 m lose no square millimetres."""
    x, y = (np.asarray(ring, np.float64) - np.asarray(ring[0], np.float64)).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def affine_of(transform) -> tuple[float, float, float, float, float, float]:
    """(a, b, x0, d, e, y0) with x = a·column + b·row + x0, y = d·column + e·row + y0, from a rasterio/affine
    `Affine` (anything with attributes a..f) or a GDAL geotransform (x0, a, b, y0, d, e); None gives
    PIXEL_TRANSFORM."""
    if transform is None:
        return PIXEL_TRANSFORM
    if all(hasattr(transform, name) for name in "abcdef"):
        return tuple(float(getattr(transform, name)) for name in "abcdef")
    values = tuple(float(value) for value in transform)
    if len(values) != 6:
        raise ValueError(f"a transform is an Affine or a 6-number GDAL geotransform, got {len(values)} numbers")
    x0, a, b, y0, d, e = values
    return a, b, x0, d, e, y0


def _geometry(polygons: list[list[np.ndarray]], affine: tuple, origin: tuple[int, int], whole: bool) -> dict:
    """A GeoJSON Polygon or MultiPolygon of `polygons` (crop corners) taken through `affine`, rings oriented
    and closed; coordinates stay integers when they are (`whole`)."""
    a, b, x0, d, e, y0 = affine
    out = []
    for polygon in polygons:
        rings = []
        for number, ring in enumerate(polygon):
            column, row = ring[:, 0] + origin[1], ring[:, 1] + origin[0]
            points = np.stack([a * column + b * row + x0, d * column + e * row + y0], axis=1)
            if (signed_area(points) > 0) != (number == 0):  # outer rings positive, holes negative
                points = points[::-1]
            points = np.concatenate([points, points[:1]])
            rings.append(points.astype(np.int64).tolist() if whole else points.tolist())
        out.append(rings)
    if len(out) == 1:
        return {"type": "Polygon", "coordinates": out[0]}
    return {"type": "MultiPolygon", "coordinates": out}


def stone_features(labels: np.ndarray, table: StoneTable, transform=None, *, origin: tuple[int, int] = (0, 0),
                   id_offset: int = 0, boxes: Sequence | None = None) -> Iterator[dict]:
    """A GeoJSON Feature for each stone of `labels`, in label order: "id" and the properties are the stone's
    row of `table` (the values NAME_stones.csv holds); the geometry its polygon (see the module's notes).

    For a crop of a larger image: `origin` is the (row, column) of the crop's top-left pixel in the image,
    and label L of the crop is the table's stone L + `id_offset`. ValueError for a label whose stone is not
    in the table."""
    affine = affine_of(transform)
    whole = all(float(value).is_integer() for value in affine) and all(float(v).is_integer() for v in origin)
    ids = np.asarray(table.columns["id"], np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    records = table.records()
    for label, polygons in stone_polygons(labels, boxes):
        stone = label + id_offset
        at = int(np.searchsorted(sorted_ids, stone))
        if at == len(sorted_ids) or sorted_ids[at] != stone:
            raise ValueError(f"label {label} (stone {stone}) is not in the stone table")
        yield {"type": "Feature", "id": stone, "properties": records[order[at]],
               "geometry": _geometry(polygons, affine, origin, whole)}


# ----------------------------------------------------------------------------- files
def crs_member(crs) -> dict | None:
    """The legacy "crs" member that GDAL's GeoJSON driver reads, for `crs`: None; "EPSG:N"; any other CRS
    text GDAL reads (WKT, an OGC URN); or a CRS object with to_epsg() and to_wkt() (rasterio, pyproj)."""
    if crs is None:
        return None
    if isinstance(crs, str):
        code = EPSG_CODE.match(crs)
        name = f"urn:ogc:def:crs:EPSG::{code.group(1)}" if code else crs.strip()
    else:
        epsg = crs.to_epsg()
        name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    if not name:
        raise ValueError("an empty CRS")
    return {"type": "name", "properties": {"name": name}}


class FeatureWriter:
    """Appends features to an open FeatureCollection (see `feature_collection`)."""

    def __init__(self, file):
        self.file, self.count = file, 0

    def add(self, features: Iterable[dict]) -> int:
        """Write `features` (Feature dicts) as they come; returns how many."""
        added = 0
        for feature in features:
            self.file.write(("\n" if not self.count else ",\n") + json.dumps(feature, separators=(",", ":")))
            self.count += 1
            added += 1
        return added


@contextlib.contextmanager
def feature_collection(path: Path, crs=None) -> Iterator[FeatureWriter]:
    """A FeatureCollection at `path`, written as features are added: yields a FeatureWriter. The file is
    written under a temporary name beside `path` and renamed into place when the block ends; if the block
    fails, nothing is left (an older file at `path` stays as it was)."""
    member = crs_member(crs)
    with partial_path(path) as partial, open(partial, "w", encoding="utf-8") as file:
        head = {"type": "FeatureCollection", **({"crs": member} if member else {})}
        file.write(json.dumps(head)[:-1] + ', "features": [')
        writer = FeatureWriter(file)
        yield writer
        file.write("\n]}\n")


def write_stones_geojson(path: Path, labels: np.ndarray, table: StoneTable, transform=None, crs=None,
                         boxes: Sequence | None = None) -> int:
    """Write one photo's stones to `path` (see `stone_features`, `feature_collection`); returns the count."""
    with feature_collection(path, crs) as writer:
        return writer.add(stone_features(labels, table, transform, boxes=boxes))
