"""stoneseg.stones: splitting touching stones, the per-stone table, size distributions, instance scores,
the 16-bit label PNG, the overlay and the U-Net border weights, on tiny hand-made images whose answers
are worked out by hand in the comments."""

import math

import cv2
import numpy as np
import pytest

from stoneseg import io, stones


def discs(shape, circles) -> np.ndarray:
    """uint8 {0, 1} mask with filled discs (x, y, radius)."""
    mask = np.zeros(shape, np.uint8)
    for x, y, radius in circles:
        cv2.circle(mask, (x, y), radius, 1, -1)
    return mask


def table(labels, mm_per_pixel=None):
    return stones.measure_stones(np.asarray(labels, np.int32), mm_per_pixel)


# ----------------------------------------------------------------------------- splitting
TWO_DISCS = [(28, 32, 14), (53, 32, 12)]  # centres 25 px apart, radii 14 + 12 = 26: they overlap in a neck


def test_two_touching_discs_split_into_two_stones_at_their_centres():
    mask = discs((64, 96), TWO_DISCS)
    assert cv2.connectedComponents(mask)[0] - 1 == 1  # one region before splitting
    labels = stones.split_stones(mask, min_distance=5, min_area=0)
    assert labels.dtype == np.uint16 and labels.max() == 2
    assert np.array_equal(labels > 0, mask > 0)  # every mask pixel belongs to one of the two stones
    found = table(labels).columns
    for x, y, _ in TWO_DISCS:
        stone = labels[y, x]
        assert stone > 0
        assert math.hypot(found["centroid_x"][stone - 1] - x, found["centroid_y"][stone - 1] - y) < 1.0
    assert labels[32, 28] != labels[32, 53]
    # The cut sits in the neck, where the circles cross: x = (25^2 + 14^2 - 12^2) / (2 * 25) + 28 = 41.5.
    assert labels[32, 40] == labels[32, 28] and labels[32, 43] == labels[32, 53]


def test_seeds_closer_than_min_distance_are_not_split():
    mask = discs((64, 96), TWO_DISCS)
    assert stones.split_stones(mask, min_distance=30, min_area=0).max() == 1  # 25 px apart < 30


def test_pieces_joined_by_a_wide_neck_are_merged_back():
    # Radius-12 discs 14 px apart cross at +-sqrt(12^2 - 7^2) = 9.7 px from the axis: the neck is about 0.8 times
    # as wide as either disc, so they are one stone when necks of 0.7 merge, two when only 0.95 does.
    mask = discs((40, 60), [(22, 20, 12), (36, 20, 12)])
    assert stones.split_stones(mask, min_distance=3, neck_ratio=0.7, min_area=0).max() == 1
    assert stones.split_stones(mask, min_distance=3, neck_ratio=0.95, min_area=0).max() == 2
    assert stones.split_stones(mask, min_distance=3, neck_ratio=None, min_area=0).max() == 2


def test_an_elongated_stone_stays_whole_even_with_close_seeds():
    y, x = np.mgrid[0:40, 0:90]
    mask = (((x - 45) / 36) ** 2 + ((y - 20) / 9) ** 2 <= 1).astype(np.uint8)
    assert stones.split_stones(mask, min_distance=1, neck_ratio=None, min_area=0).max() > 1  # ridge pixels as seeds
    assert stones.split_stones(mask, min_distance=1, min_area=0).max() == 1  # their necks are as wide as the stone


def test_split_at_a_reduced_working_size_fits_the_full_mask():
    mask = discs((64, 96), TWO_DISCS)
    assert stones.work_factor(mask.shape, work_pixels=800) == 3  # 22 x 32 cells of 3 x 3 pixels
    labels = stones.split_stones(mask, min_distance=5, min_area=0, work_pixels=800)
    assert labels.max() == 2 and labels[32, 28] != labels[32, 53]
    assert not np.any(labels[mask == 0])  # labels only on the mask
    assert np.count_nonzero(labels) / np.count_nonzero(mask) > 0.99  # and on (nearly) all of it


@pytest.mark.parametrize("work_pixels", [100_000, 800, 300])  # working factors 1, 3 and 4
def test_boxes_from_the_split_hold_every_stone(work_pixels):
    mask = discs((64, 96), TWO_DISCS + [(80, 12, 8), (84, 50, 9)])
    labels, boxes = stones.split_stones(mask, min_distance=5, min_area=0, work_pixels=work_pixels, return_boxes=True)
    assert labels.max() == 4 and len(boxes) == 4
    for index, (rows, columns) in enumerate(boxes):
        inside = np.zeros(labels.shape, bool)
        inside[rows, columns] = True
        assert not np.any((labels == index + 1) & ~inside)
    tight = stones.measure_stones(labels).columns
    for name, values in stones.measure_stones(labels, boxes=boxes).columns.items():
        assert np.allclose(values, tight[name], rtol=1e-9, atol=0)  # moments about another origin: rounding only


def test_work_factor_is_the_smallest_whole_factor_within_the_budget():
    assert stones.work_factor((3456, 4806), 1_000_000) == 5  # 692 x 962 = 665,704; at 4: 864 x 1202 = 1,038,528
    assert stones.work_factor((512, 512), 1_000_000) == 1
    assert stones.work_factor((64, 96), 800) == 3  # 22 x 32 = 704; at 2: 32 x 48 = 1,536
    assert stones.work_factor((64, 96), 700) == 4  # 16 x 24 = 384


def test_one_huge_region_is_split_into_its_stones():
    # 3 x 3 overlapping discs: one region covering most of the photo.
    circles = [(14 + 22 * column, 14 + 22 * row, 13) for row in range(3) for column in range(3)]
    mask = discs((72, 72), circles)
    assert cv2.connectedComponents(mask)[0] - 1 == 1
    labels = stones.split_stones(mask, min_distance=6, min_area=0)
    assert labels.max() == 9
    assert len({int(labels[y, x]) for x, y, _ in circles}) == 9


def test_probabilities_are_thresholded_and_small_specks_dropped():
    probability = discs((64, 96), TWO_DISCS).astype(np.float32) * 0.7
    probability[5, 90] = 0.9  # a one-pixel speck
    labels = stones.split_stones(probability, min_distance=5, min_area=4)
    assert labels.max() == 2 and labels[5, 90] == 0
    assert stones.split_stones(probability, min_distance=5, threshold=0.8, min_area=0).max() == 1  # the speck


def test_empty_and_unusable_masks():
    assert not stones.split_stones(np.zeros((40, 50), np.uint8)).any()
    with pytest.raises(ValueError, match="stone everywhere"):
        stones.split_stones(np.ones((40, 50), np.uint8))
    with pytest.raises(ValueError, match="height, width"):
        stones.split_stones(np.zeros((40, 50, 3), np.uint8))


def test_stone_regions_are_the_mask_regions_unsplit_without_specks():
    """The count before splitting: two touching discs stay one region, a lone disc is another, and a
    4-pixel speck is above MIN_STONE_FRACTION of 64 x 96 (0.61 px), so only a larger min_area drops it."""
    mask = discs((64, 96), TWO_DISCS + [(85, 50, 6)])
    mask[2:4, 2:4] = 1
    assert stones.stone_regions(mask).max() == 3  # the default limit, 0.61 px, keeps the 4-pixel speck
    labels = stones.stone_regions(mask * 255, min_area=5)
    assert labels.dtype == np.uint16 and labels.max() == 2
    assert labels[32, 28] == labels[32, 53] != labels[50, 85] and labels[2, 2] == 0
    assert stones.stone_regions(np.where(mask > 0, 0.9, 0.1).astype(np.float32), min_area=5).max() == 2


def test_true_stones_are_8_connected_regions():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = 255
    mask[3, 3] = 255  # touches the first square diagonally: the same stone
    mask[6:8, 6:8] = 255
    labels = stones.true_stones(mask)
    assert labels.max() == 2 and labels[3, 3] == labels[1, 1]


def test_stones20_holds_6235_true_stones(stones20):
    total = 0
    for path in sorted(stones20.glob("Image*_label.jpg")):
        mask, _ = io.read_mask(path, io.Scale(1))
        total += int(stones.true_stones(mask).max())
    assert total == 6235


# ----------------------------------------------------------------------------- the table
def test_rectangle_measurements_by_hand():
    labels = np.zeros((30, 50), np.int32)
    labels[8:18, 5:35] = 1  # 30 wide, 10 high
    row = {name: values[0] for name, values in table(labels).columns.items()}
    assert row["id"] == 1 and row["area_px"] == 300 and row["touches_edge"] == 0
    assert row["centroid_x"] == pytest.approx(19.5) and row["centroid_y"] == pytest.approx(12.5)
    assert row["diameter_px"] == pytest.approx(math.sqrt(4 * 300 / math.pi))  # 19.544
    # Pixel centres of a run of n pixels have variance (n^2 - 1) / 12; an axis is 4 standard deviations.
    assert row["major_axis_px"] == pytest.approx(4 * math.sqrt((30**2 - 1) / 12))  # 34.62
    assert row["minor_axis_px"] == pytest.approx(4 * math.sqrt((10**2 - 1) / 12))  # 11.49


def test_rotated_ellipse_measurements():
    y, x = np.mgrid[0:80, 0:80] - 40.0
    turn = math.radians(30)
    along, across = x * math.cos(turn) + y * math.sin(turn), -x * math.sin(turn) + y * math.cos(turn)
    mask = ((along / 20) ** 2 + (across / 10) ** 2 <= 1).astype(np.uint8)  # semi-axes 20 and 10, turned 30 degrees
    row = {name: values[0] for name, values in table(mask).columns.items()}
    assert row["area_px"] == pytest.approx(math.pi * 20 * 10, rel=0.01)  # 628
    assert row["diameter_px"] == pytest.approx(2 * math.sqrt(20 * 10), rel=0.01)  # 28.3
    # A filled ellipse's variance along a semi-axis a is a^2 / 4, so 4 standard deviations are 2a.
    assert row["major_axis_px"] == pytest.approx(40, rel=0.01)
    assert row["minor_axis_px"] == pytest.approx(20, rel=0.02)
    assert (row["centroid_x"], row["centroid_y"]) == pytest.approx((40, 40), abs=0.2)


def test_millimetres_and_touches_edge():
    labels = np.zeros((20, 30), np.int32)
    labels[0:4, 10:14] = 1  # on the top edge
    labels[8:12, 8:12] = 2
    labels[15:20, 25:30] = 3  # in the bottom-right corner
    found = table(labels, mm_per_pixel=0.5).columns
    assert list(found["touches_edge"]) == [1, 0, 1]
    assert list(found["area_mm2"]) == pytest.approx([4.0, 4.0, 6.25])  # 16, 16, 25 px x 0.25 mm^2
    assert list(found["diameter_mm"]) == pytest.approx(0.5 * found["diameter_px"])
    for bad in (0, -0.1):
        with pytest.raises(ValueError, match="greater than 0"):
            table(labels, mm_per_pixel=bad)


def test_table_csv():
    labels = np.zeros((20, 30), np.int32)
    labels[8:12, 8:12] = 7
    text = table(labels, mm_per_pixel=0.1).csv().decode().splitlines()
    assert text[0] == ("id,centroid_x,centroid_y,area_px,diameter_px,major_axis_px,minor_axis_px,touches_edge,"
                       "area_mm2,diameter_mm,major_axis_mm,minor_axis_mm")
    assert text[1].startswith("7,9.50,9.50,16,4.51,") and text[1].split(",")[7:9] == ["0", "0.16"]
    assert len(text) == 2


def test_empty_table():
    empty = table(np.zeros((10, 10)))
    assert len(empty) == 0 and empty.csv().decode().count("\n") == 1


# ----------------------------------------------------------------------------- distributions
def squares(sides) -> stones.StoneTable:
    """A table of square stones of the given sides, apart and away from the edges."""
    labels = np.zeros((20, 12 * len(sides)), np.int32)
    for index, side in enumerate(sides):
        labels[2:2 + side, 12 * index + 2:12 * index + 2 + side] = index + 1
    return table(labels)


def diameter(area):
    return math.sqrt(4 * area / math.pi)


def test_d_values_by_count_and_by_area_by_hand():
    found = squares([2, 4, 6, 8])  # areas 4, 16, 36, 64; diameters 2.257, 4.514, 6.770, 9.027
    by_count = stones.size_distribution(found, by="count")
    assert list(by_count.passing) == pytest.approx([25, 50, 75, 100])
    assert by_count.d50 == pytest.approx(diameter(16))  # exactly the second stone
    assert by_count.d10 == pytest.approx(diameter(4))  # below the first point: the smallest size
    # D80 between 75 % (6.770) and 100 % (9.027), straight on a log axis: 6.770 * (9.027 / 6.770) ** (5 / 25)
    assert by_count.d80 == pytest.approx(7.1711, abs=1e-3)
    by_area = stones.size_distribution(found)  # the default
    assert by_area.by == "area" and by_area.unit == "px"
    # Weights 4, 16, 36, 64 of 120: 3.33, 16.67, 46.67, 100 % passing.
    assert list(by_area.passing) == pytest.approx([100 * 4 / 120, 100 * 20 / 120, 100 * 56 / 120, 100])
    # D50 between 46.67 % (6.770) and 100 % (9.027): 6.770 * (4 / 3) ** ((50 - 46.67) / 53.33) = 6.893
    assert by_area.d50 == pytest.approx(6.8930, abs=1e-3)


def test_distribution_pools_tables_and_leaves_out_edge_stones():
    pooled = stones.size_distribution([squares([2, 4]), squares([6, 8])], by="count")
    assert pooled.d50 == pytest.approx(diameter(16))
    labels = np.zeros((20, 30), np.int32)
    labels[0:8, 0:8] = 1  # a large stone cut by the edge
    labels[10:12, 20:22] = 2
    assert len(stones.size_distribution(table(labels))) == 1
    assert stones.size_distribution(table(labels)).d50 == pytest.approx(diameter(4))
    assert len(stones.size_distribution(table(labels), include_edge=True)) == 2


def test_distribution_in_millimetres():
    labels = np.zeros((20, 30), np.int32)
    labels[5:9, 5:9] = 1
    found = stones.size_distribution(table(labels, mm_per_pixel=2.0))
    assert found.unit == "mm" and found.d50 == pytest.approx(2 * diameter(16))
    with pytest.raises(ValueError, match="unit"):
        stones.size_distribution(table(labels), unit="mm")


def test_empty_distribution_has_no_d_values_and_no_curve():
    empty = stones.size_distribution(table(np.zeros((10, 10))))
    assert len(empty) == 0 and empty.d10 is None and empty.d50 is None and empty.d80 is None
    assert stones.size_curve_png(empty) is None


def test_size_curve_is_a_png():
    data = stones.size_curve_png(stones.size_distribution(squares([2, 4, 6, 8])), "four squares")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300


def sample_table(diameters) -> stones.StoneTable:
    """A table of stones of the given equivalent-circle diameters (px), none on the edge."""
    diameters = np.asarray(diameters, np.float64)
    return stones.StoneTable({"id": np.arange(1, len(diameters) + 1), "diameter_px": diameters,
                              "area_px": np.pi * diameters**2 / 4, "touches_edge": np.zeros(len(diameters), np.int64)})


# Diameters log-normal with median exp(MU) by count: by area (d^2) the distribution is log-normal too, its median
# exp(MU + 2 SIGMA^2) (the area-weighted density is the count density times d^2, which shifts the log-mean by
# 2 SIGMA^2): the D50 of the material the samples are drawn from.
MU, SIGMA = math.log(30.0), 0.5
TRUE_D50_BY_AREA = math.exp(MU + 2 * SIGMA**2)


def lognormal_sample(count, seed):
    return sample_table(np.random.default_rng(seed).lognormal(MU, SIGMA, count))


def even_sample(count):
    """`count` stones at evenly spaced quantiles of the log-normal: a known sample, its D50 that of the material."""
    from scipy.stats import norm

    return sample_table(np.exp(MU + SIGMA * norm.ppf((np.arange(count) + 0.5) / count)))


def test_each_resample_is_read_as_size_passing_reads_its_stones():
    """Stones drawn 0 times are not points of a resample's curve (the plateau they leave must not move the
    interpolation), stones drawn twice weigh twice; D values below the first point are its size."""
    rng = np.random.default_rng(3)
    found = stones.size_distribution(sample_table(rng.lognormal(3, 0.6, 40)))
    percents = np.array([0.5, 10, 16, 50, 84, 96, 99.9])
    drawn = rng.integers(0, 3, size=(20, 40))
    drawn[:, 0] = 0  # the smallest stone never drawn: the resample's D0.5 is a larger stone
    got = stones._resampled_log_sizes(np.log(found.sizes), found.weights, drawn, percents)
    for row, counts in zip(got, drawn):
        again = sample_table(np.repeat(found.sizes, counts))
        expected = [stones.size_distribution(again).size_passing(percent) for percent in percents]
        assert np.exp(row) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_interval_covers_the_d50_and_narrows_with_more_stones():
    few = stones.size_values(stones.size_distribution(even_sample(150)), [50])
    many = stones.size_values(stones.size_distribution(even_sample(600)), [50])
    for values in (few, many):
        assert values.sizes[0] == pytest.approx(TRUE_D50_BY_AREA, rel=0.02)
        assert values.low[0] < TRUE_D50_BY_AREA < values.high[0]
    # 4 x the stones: the interval about half as wide (1 / sqrt(4)).
    width = lambda values: values.high[0] - values.low[0]  # noqa: E731
    assert width(many) < 0.7 * width(few)
    assert few.level == 0.95 and few.resamples == stones.DEFAULT_RESAMPLES


def test_bootstrap_intervals_cover_at_about_their_level():
    """Over 100 samples of 200 stones, the 80 % intervals of the area-weighted D50 hold the true D50 in about
    80 of them (binomial 95 % range 72..88): intervals too narrow or too wide fail."""
    covered = 0
    for seed in range(100):
        values = stones.size_values(stones.size_distribution(lognormal_sample(200, seed)), [50], level=0.8,
                                    resamples=400, seed=seed)
        covered += values.low[0] < TRUE_D50_BY_AREA < values.high[0]
    assert 70 <= covered <= 90


def test_bootstrap_is_seeded():
    found = stones.size_distribution(lognormal_sample(300, seed=4))
    first = stones.size_values(found, [16, 50, 84], seed=7)
    again = stones.size_values(found, [16, 50, 84], seed=7)
    other = stones.size_values(found, [16, 50, 84], seed=8)
    assert np.array_equal(first.low, again.low) and np.array_equal(first.high, again.high)
    assert not np.array_equal(first.low, other.low)
    assert np.array_equal(first.sizes, other.sizes)  # the D values themselves do not depend on the seed
    # Blocks of resamples give the same draws as one block.
    assert np.array_equal(stones.bootstrap_sizes(found, [50], 50, seed=7),
                          stones.bootstrap_sizes(found, [50], 100, seed=7)[:50])


def test_size_values_columns_say_their_unit(monkeypatch):
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 2:6], labels[8:16, 10:18] = 1, 2
    found = stones.size_distribution(table(labels, mm_per_pixel=0.5))
    values = stones.size_values(found, [16, 50.5], resamples=200)
    assert list(values.columns()) == ["d16_mm", "d16_mm_low", "d16_mm_high", "d50.5_mm", "d50.5_mm_low",
                                      "d50.5_mm_high"]
    in_pixels = stones.size_values(stones.size_distribution(table(labels), unit="px"), [16, 50.5], resamples=200)
    scaled = in_pixels.scaled(0.5, "mm")  # one photo: every resample scales with its stones
    assert list(in_pixels.columns())[0] == "d16_px"
    assert scaled.columns() == pytest.approx(values.columns())
    assert list(stones.size_values(found, [50], resamples=0).columns()) == ["d50_mm"]  # no interval asked for
    empty = stones.size_values(stones.size_distribution(table(np.zeros((5, 5)))), [50])
    assert empty.columns() == {"d50_px": None, "d50_px_low": None, "d50_px_high": None}
    assert stones.d_column(84, "px", "high") == "d84_px_high"


def test_percents_are_parsed_with_one_clear_error():
    assert stones.parse_percents("16,50,84,96") == (16, 50, 84, 96)
    assert stones.parse_percents(" 84, 16 ,50") == (16, 50, 84)
    assert stones.parse_percents("2.5") == (2.5,)
    for text, problem in (("16,x", "'x' is not a number"), ("0,50", "not strictly between 0 and 100"),
                          ("50,100", "not strictly between"), ("50,50", "given twice"), ("", "not a number")):
        with pytest.raises(ValueError, match=problem):
            stones.parse_percents(text)


def test_size_values_refuse_a_bad_level_or_resample_count():
    found = stones.size_distribution(lognormal_sample(20, seed=5))
    with pytest.raises(ValueError, match="level"):
        stones.size_values(found, [50], level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        stones.size_values(found, [50], resamples=-1)


def test_size_curve_shades_the_confidence_band():
    found = stones.size_distribution(lognormal_sample(200, seed=6))
    percents = (16, 50, 84, 96)
    band = stones.size_values(found, stones.curve_percents(percents))
    # The same resamples whatever the percents: the band's width at 50 % is D50's own interval.
    assert band.at([16, 50]).columns() == stones.size_values(found, [16, 50]).columns()
    plain = cv2.imdecode(np.frombuffer(stones.size_curve_png(found, "plain", percents), np.uint8), cv2.IMREAD_COLOR)
    shaded = cv2.imdecode(np.frombuffer(stones.size_curve_png(found, "shaded", percents, band), np.uint8),
                          cv2.IMREAD_COLOR)
    # The band: the curve's blue (#1f5fa8) at alpha 0.18 over white, about (218, 226, 238) in RGB.
    tint = lambda image: int(np.count_nonzero(np.all(np.abs(image.astype(int) - (238, 226, 218)) <= 6, axis=2)))  # noqa: E731
    assert tint(shaded) > 20 * max(tint(plain), 100)  # the plain curve's antialiased edges have a few


# ----------------------------------------------------------------------------- instance scores
def test_matching_counts_by_hand():
    truth = np.zeros((20, 40), np.int32)
    truth[2:6, 2:6] = 1  # A: found exactly
    truth[2:6, 10:14] = 2  # B: found as 12 px + 4 px pieces
    truth[10:14, 2:6] = 3  # C: missed
    predicted = np.zeros_like(truth)
    predicted[2:6, 2:6] = 5
    predicted[2:5, 10:14] = 6  # IoU 12 / 16 = 0.75 with B: a match
    predicted[5, 10:14] = 7  # IoU 4 / 16 with B: a false stone
    predicted[10:14, 20:24] = 8  # nothing there: a false stone
    comparison = stones.compare_instances(truth, predicted)
    assert (comparison.true_count, comparison.predicted_count, comparison.matched) == (3, 4, 2)
    scores = stones.instance_scores(comparison)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 2 / (3 + 4))


def test_iou_of_one_half_matches_and_just_below_does_not():
    truth = np.zeros((10, 20), np.int32)
    truth[2:6, 2:6] = 1  # 16 px
    predicted = np.zeros_like(truth)
    predicted[2:6, 2:10] = 1  # covers it and 16 px more: IoU 16 / 32
    assert stones.match_instances(truth, predicted) == 1
    predicted[6, 2] = 1  # IoU 16 / 33
    assert stones.match_instances(truth, predicted) == 0


def test_merged_stones_match_at_most_one_true_stone():
    truth = np.zeros((10, 20), np.int32)
    truth[2:6, 2:6] = 1  # 16 px
    truth[2:4, 7:9] = 2  # 4 px
    predicted = np.where(truth > 0, 1, 0).astype(np.int32)  # one stone over both: IoU 0.8 and 0.2
    comparison = stones.compare_instances(truth, predicted)
    assert comparison.matched == 1
    assert stones.instance_scores(comparison)["recall"] == pytest.approx(1 / 2)


def test_pooled_scores_and_d_errors():
    truth = np.zeros((20, 40), np.int32)
    truth[2:6, 2:6] = 1  # 16 px
    truth[10:18, 10:18] = 2  # 64 px
    exact = stones.compare_instances(truth, truth)
    half = np.where(truth == 2, 0, truth)  # the large stone missed
    missed = stones.compare_instances(truth, half)
    one = stones.instance_scores(exact)
    assert (one["f1"], one["d50_relative_error"], one["d80_relative_error"]) == (1.0, 0.0, 0.0)
    partial = stones.instance_scores(missed, by="count")
    # By count the true D50 is the 16 px stone (50 % passing); the prediction has only that stone.
    assert partial["d50_relative_error"] == pytest.approx(0.0)
    # True D80 by count: 4.514 * (9.027 / 4.514) ** (30 / 50); predicted D80: 4.514.
    assert partial["d80_relative_error"] == pytest.approx(2 ** -0.6 - 1)
    pooled = stones.instance_scores([exact, missed])
    assert (pooled["true_count"], pooled["predicted_count"]) == (4, 3)
    assert pooled["recall"] == pytest.approx(3 / 4) and pooled["precision"] == 1.0
    assert pooled["f1"] == pytest.approx(2 * 3 / 7)
    assert set(pooled) == {"true_count", "true_left_out", "predicted_count", "precision", "recall", "f1", "d50_relative_error",
                           "d80_relative_error"}


def test_scores_of_empty_photos():
    nothing = np.zeros((10, 10), np.int32)
    some = nothing.copy()
    some[2:5, 2:5] = 1
    assert stones.instance_scores(stones.compare_instances(nothing, nothing)) == {
        "true_count": 0, "true_left_out": 0, "predicted_count": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
        "d50_relative_error": None, "d80_relative_error": None}
    missed = stones.instance_scores(stones.compare_instances(some, nothing))
    assert (missed["precision"], missed["recall"], missed["f1"], missed["d50_relative_error"]) == (1.0, 0.0, 0.0, None)


# ----------------------------------------------------------------------------- images
def test_instance_png_round_trip():
    labels = np.zeros((30, 40), np.uint16)
    labels[1:5, 1:5] = 1
    labels[10:20, 10:30] = 300
    labels[25:28, 2:4] = 65535
    data = stones.encode_instances_png(labels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = stones.decode_instances_png(data)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)
    assert np.array_equal(stones.decode_instances_png(stones.encode_instances_png(labels.astype(np.int32))), labels)
    with pytest.raises(ValueError, match="0..65535"):
        stones.encode_instances_png(np.full((4, 4), 65536, np.int32))
    with pytest.raises(ValueError, match="16-bit"):
        stones.decode_instances_png(io.encode_png(np.zeros((4, 4), np.uint8)))


def test_overlay_outlines_each_stone_in_its_own_colour():
    labels = np.zeros((40, 60), np.int32)
    labels[5:25, 5:25] = 1
    labels[5:25, 25:45] = 2  # touching the first
    photo = np.full((40, 60, 3), 100, np.uint8)
    overlay = stones.draw_stones(photo, labels)
    colours = stones.stone_colours()
    assert np.array_equal(overlay[5, 10], colours[1]) and np.array_equal(overlay[15, 24], colours[1])
    assert np.array_equal(overlay[15, 25], colours[2]) and np.array_equal(overlay[24, 30], colours[2])
    assert not np.array_equal(colours[1], colours[2])
    assert np.array_equal(overlay[15, 15], photo[15, 15]) and np.array_equal(overlay[35, 55], photo[35, 55])


# ----------------------------------------------------------------------------- border weights
def test_border_weights_are_high_in_the_gap_and_w_c_far_away():
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 0:10] = 1  # stone A: columns 0..9
    mask[10:20, 12:22] = 1  # stone B: columns 12..21, a 2-pixel gap (columns 10, 11)
    weights = stones.border_weights(mask, balance=False)
    # Column 10 is 1 px from A and 2 px from B: 1 + 10 * exp(-(1 + 2)^2 / (2 * 5^2)) = 9.3527; column 11 alike.
    assert weights[15, 10] == pytest.approx(1 + 10 * math.exp(-9 / 50), rel=1e-5)
    assert weights[15, 11] == pytest.approx(weights[15, 10], rel=1e-5)
    assert weights[15, 10] == weights.max()
    assert weights[39, 59] == 1.0  # over 20 px from both stones
    assert weights[15, 5] == 1.0  # inside a stone
    balanced = stones.border_weights(mask)
    # 200 stone pixels of 2,400: stone 2400 / (2 * 200) = 6, background 2400 / (2 * 2200) = 0.5454.
    assert balanced[15, 5] == pytest.approx(6.0)
    assert balanced[39, 59] == pytest.approx(2400 / 4400)
    assert balanced[15, 10] == pytest.approx(2400 / 4400 + 10 * math.exp(-9 / 50), rel=1e-5)


def test_border_weights_of_a_single_stone_have_no_border_term():
    mask = np.zeros((30, 30), np.uint8)
    mask[10:20, 10:20] = 1
    assert np.all(stones.border_weights(mask, balance=False) == 1.0)
