"""stoneseg.geojson: stones as GeoJSON polygons on hand-made stones (a square at the photo's corner, a disc, a
ring with a stone in its hole, two pixels touching at a corner) whose areas and corners are known."""

import csv
import io as bytes_io
import json
from collections import namedtuple

import cv2
import numpy as np
import pytest

from stoneseg import geojson, stones

# A stand-in for rasterio's Affine (x = a * column + b * row + c, y = d * column + e * row + f), which the
# core install does not have: anything with attributes a..f is read as one.
Affine = namedtuple("Affine", "a b c d e f")
PIXEL_M = 0.002  # a 2 mm pixel of a north-up UTM grid, its top-left corner at (500000, 5000000)
NORTH_UP = Affine(PIXEL_M, 0.0, 500_000.0, 0.0, -PIXEL_M, 5_000_000.0)
GDAL_NORTH_UP = (500_000.0, PIXEL_M, 0.0, 5_000_000.0, 0.0, -PIXEL_M)  # the same as a GDAL geotransform


def hand_made_labels() -> np.ndarray:
    """1: a 6 x 4 rectangle in the top-left corner (cut by the edge); 2: a disc; 3: a ring (a disc with a
    disc-shaped hole); 4: a small square inside the ring's hole; 5: two pixels touching at a corner."""
    labels = np.zeros((60, 90), np.int32)
    labels[0:4, 0:6] = 1
    disc = np.zeros_like(labels, np.uint8)
    cv2.circle(disc, (20, 30), 9, 1, -1)
    labels[disc > 0] = 2
    ring = np.zeros_like(labels, np.uint8)
    cv2.circle(ring, (60, 30), 20, 1, -1)
    cv2.circle(ring, (60, 30), 10, 0, -1)
    labels[ring > 0] = 3
    labels[28:33, 58:63] = 4
    labels[50, 5] = labels[51, 6] = 5
    return labels


def polygons_of(geometry: dict) -> list:
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]


def area_of(geometry: dict) -> float:
    """Outer rings' areas less their holes' (shoelace), as a GIS measures a polygon."""
    return sum(abs(geojson.signed_area(np.array(ring[:-1]))) * (1 if index == 0 else -1)
               for polygon in polygons_of(geometry) for index, ring in enumerate(polygon))


def test_one_feature_per_stone_with_the_pixel_area_and_the_tables_row():
    labels = hand_made_labels()
    table = stones.measure_stones(labels)
    features = list(geojson.stone_features(labels, table))
    assert [feature["id"] for feature in features] == [1, 2, 3, 4, 5]
    rows = list(csv.DictReader(bytes_io.StringIO(table.csv().decode())))
    for feature, row in zip(features, rows):
        # Exactly the pixel count: the rings run along pixel edges, not through the boundary pixels' centres
        # (which would make the 6 x 4 rectangle 5 x 3 = 15 and the two pixels' stone 0).
        assert area_of(feature["geometry"]) == feature["properties"]["area_px"] == np.count_nonzero(
            labels == feature["id"])
        assert feature["properties"] == {name: int(value) if name in stones.WHOLE_COLUMNS else float(value)
                                         for name, value in row.items()}  # the values NAME_stones.csv holds
    assert set(features[0]["properties"]) == set(stones.PIXEL_COLUMNS)


def test_rings_are_oriented_and_the_ring_keeps_its_hole():
    labels = hand_made_labels()
    for transform in (None, NORTH_UP, Affine(PIXEL_M, 0.0, 0.0, 0.0, PIXEL_M, 0.0)):  # y up, and y down
        features = {feature["id"]: feature for feature in
                    geojson.stone_features(labels, stones.measure_stones(labels), transform)}
        for feature in features.values():
            for polygon in polygons_of(feature["geometry"]):
                assert all(ring[0] == ring[-1] and len(ring) >= 4 for ring in polygon)  # closed rings
                assert geojson.signed_area(np.array(polygon[0][:-1])) > 0  # outer: counterclockwise
                assert all(geojson.signed_area(np.array(hole[:-1])) < 0 for hole in polygon[1:])  # holes: clockwise
        ring = features[3]["geometry"]
        assert ring["type"] == "Polygon" and len(ring["coordinates"]) == 2  # the outer circle and the hole
        assert features[4]["geometry"]["type"] == "Polygon" and len(features[4]["geometry"]["coordinates"]) == 1


def test_pixel_coordinates_are_columns_and_minus_rows_of_pixel_corners():
    labels = hand_made_labels()
    features = list(geojson.stone_features(labels, stones.measure_stones(labels)))
    corner = features[0]["geometry"]["coordinates"][0]
    assert sorted(map(tuple, corner[:-1])) == [(0, -4), (0, 0), (6, -4), (6, 0)]
    assert all(isinstance(value, int) for point in corner for value in point)
    assert sorted(map(tuple, features[4]["geometry"]["coordinates"][0][:-1])) == sorted(
        [(5, -50), (6, -50), (6, -51), (7, -51), (7, -52), (6, -52), (6, -51), (5, -51)])  # through (6, -51) twice


def test_map_coordinates_under_an_affine_transform_and_a_gdal_geotransform():
    labels = hand_made_labels()
    table = stones.measure_stones(labels)
    in_pixels = list(geojson.stone_features(labels, table))
    for transform in (NORTH_UP, GDAL_NORTH_UP):
        features = list(geojson.stone_features(labels, table, transform))
        for feature, pixels in zip(features, in_pixels):
            # Area in m^2 = area_px x the pixel's area, up to the rounding of coordinates near 5,000,000 m to
            # float64 (9e-10 m, a 2e-6 part of a 2 mm pixel's side; 5e-8 of the rectangle's area here).
            assert area_of(feature["geometry"]) == pytest.approx(feature["properties"]["area_px"] * PIXEL_M**2,
                                                                 rel=1e-6)
            assert feature["properties"] == pixels["properties"]
        corner = np.array(sorted(map(tuple, features[0]["geometry"]["coordinates"][0][:-1])))
        expected = [(500_000.0, 5_000_000.0 - 4 * PIXEL_M), (500_000.0, 5_000_000.0),
                    (500_000.0 + 6 * PIXEL_M, 5_000_000.0 - 4 * PIXEL_M), (500_000.0 + 6 * PIXEL_M, 5_000_000.0)]
        np.testing.assert_allclose(corner, expected, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="6-number"):
        list(geojson.stone_features(labels, table, (1.0, 0.0, 0.0, 1.0)))


def test_a_crop_of_a_larger_image_places_its_stones_and_takes_their_ids():
    labels = hand_made_labels()
    table = stones.measure_stones(labels)
    whole = {feature["id"]: feature for feature in geojson.stone_features(labels, table, NORTH_UP)}
    top, left = 10, 35  # a crop holding the ring and the square inside it, labels renumbered from 1
    crop = labels[top:60, left:90].copy()
    crop[crop > 0] -= 2
    crop[crop < 0] = 0
    parts = list(geojson.stone_features(crop, table, NORTH_UP, origin=(top, left), id_offset=2))
    assert [feature["id"] for feature in parts] == [3, 4]
    for feature in parts:
        assert feature == whole[feature["id"]]
    with pytest.raises(ValueError, match="not in the stone table"):
        list(geojson.stone_features(crop, table, id_offset=10))


def test_feature_collection_streams_and_renames_into_place(tmp_path):
    labels = hand_made_labels()
    table = stones.measure_stones(labels, mm_per_pixel=2.0)
    path = tmp_path / "photo_stones.geojson"
    assert geojson.write_stones_geojson(path, labels, table, NORTH_UP, "EPSG:32632") == 5
    written = json.loads(path.read_text())
    assert written["type"] == "FeatureCollection" and len(written["features"]) == 5
    assert written["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}}
    assert written["features"][1]["properties"]["diameter_mm"] == float(f"{table.columns['diameter_mm'][1]:.6g}")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it

    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with geojson.feature_collection(path) as writer:
            writer.add(geojson.stone_features(labels, table))
            raise RuntimeError("the run stops half way")
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # the old file, nothing half-written

    empty = tmp_path / "empty.geojson"
    with geojson.feature_collection(empty):
        pass
    assert json.loads(empty.read_text()) == {"type": "FeatureCollection", "features": []}  # no "crs": pixels


def test_crs_member_names_epsg_codes_by_urn_and_other_crs_by_their_text():
    class Crs:  # rasterio's and pyproj's CRS answer to_epsg() and to_wkt()
        def __init__(self, epsg, wkt):
            self.epsg, self.wkt = epsg, wkt

        def to_epsg(self):
            return self.epsg

        def to_wkt(self):
            return self.wkt

    local = 'LOCAL_CS["site grid",LOCAL_DATUM["survey",0],UNIT["metre",1]]'
    assert geojson.crs_member(None) is None
    assert geojson.crs_member("epsg:2056")["properties"]["name"] == "urn:ogc:def:crs:EPSG::2056"
    assert geojson.crs_member(local)["properties"]["name"] == local
    assert geojson.crs_member(Crs(32632, "ignored"))["properties"]["name"] == "urn:ogc:def:crs:EPSG::32632"
    assert geojson.crs_member(Crs(None, local)) == {"type": "name", "properties": {"name": local}}
