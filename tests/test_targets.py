"""The instance-aware outputs' targets (stoneseg.targets): computed by hand on two touching discs and a disc cut
by the photo's edge, carried by build_records, and moved by the train step exactly as the mask is moved."""

import cv2
import keras
import numpy as np
import pytest

from stoneseg import io, targets
from stoneseg.augment import RandomRecordCrop, SegmentationAugmentation
from stoneseg.model import build_unet
from stoneseg.trainer import SegmentationTrainer

RADIUS = 12


def discs():
    """int32 labels 80 x 100: disc 1 at (40, 30) and disc 2 at (40, 55) touching it (radius 12, centres 25 px
    apart: columns 42 and 43 are where they meet), disc 3 centred at (-4, 80), cut by the top edge."""
    labels = np.zeros((80, 100), np.int32)
    rows, cols = np.mgrid[:80, :100]
    for label, (y, x) in enumerate(((40, 30), (40, 55), (-4, 80)), start=1):
        inside = (rows - y) ** 2 + (cols - x) ** 2 <= RADIUS ** 2
        labels[inside & (labels == 0)] = label
    return labels


def test_the_band_of_two_touching_discs_and_a_cut_disc_by_hand():
    labels = discs()
    band = targets.boundary_band(labels, width=1)
    # Each stone pixel is band exactly when one of its 8 neighbours has another label, background included.
    padded = np.pad(labels, 1, mode="edge")  # the photo's edge is no stone's edge
    neighbours = [padded[1 + dy:81 + dy, 1 + dx:101 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    by_hand = np.any([neighbour != labels for neighbour in neighbours], axis=0)
    assert (band.astype(bool) == by_hand).all()
    # Where the discs meet, the band runs through both sides; their centres are cores.
    assert band[40, 42] == band[40, 43] == 1 and labels[40, 42] == 1 and labels[40, 43] == 2
    assert band[40, 30] == band[40, 55] == 0
    # The background 1 pixel outside a disc is band, 2 pixels outside is not; the cut disc's top row is not
    # band where it is inside the disc (the photo's edge), only at its own rim.
    assert band[40, 30 - RADIUS - 1] == 1 and band[40, 30 - RADIUS - 2] == 0
    assert band[0, 80] == band[0, 72] == 0 and band[0, 69] == band[0, 68] == 1  # its rim: |x - 80| <= sqrt(144 - 16)
    assert targets.boundary_band(labels, width=2)[40, 30 - RADIUS - 2] == 1  # a wider band reaches further


def test_the_normalised_distance_of_two_touching_discs_and_a_cut_disc_by_hand():
    labels = discs()
    distance = targets.normalised_distance(labels)
    assert distance.dtype == np.float32 and distance[labels == 0].max() == 0
    for label in (1, 2, 3):
        assert distance[labels == label].max() == pytest.approx(1.0)
    # A whole disc: 1 at its centre, about (R - r) / R at r from it, the same towards the background and
    # towards the disc it touches (the other stone is its edge too).
    assert distance[40, 30] == distance[40, 55] == pytest.approx(1.0)
    for r in (4, 8):
        for x in (30 - r, 30 + r):  # towards the background and towards disc 2
            assert distance[40, x] == pytest.approx((RADIUS + 1 - r) / (RADIUS + 1), abs=0.05)
    assert distance[40, 42] == pytest.approx(1 / distance_peak(labels, 1), abs=1e-6)  # next to disc 2: 1 px
    # The cut disc peaks on the photo's edge straight above its centre, not at its centre (outside the photo).
    assert distance[0, 80] == pytest.approx(1.0)
    assert distance[0, 76] < distance[0, 80]


def distance_peak(labels, label):
    """The largest Euclidean distance inside one stone to a pixel outside it (OpenCV, by hand)."""
    stone = np.pad((labels == label).astype(np.uint8), 1)
    return cv2.distanceTransform(stone, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).max()


def test_records_targets_agree_with_the_records_mask():
    """A record's targets are made at its size from the full-size labels and never say stone where its mask
    says background; mask pixels that the nearest-resized labels miss are band."""
    labels = discs()
    mask, _ = io.decode_mask(io.encode_png((labels > 0).astype(np.uint8) * 255), io.Scale(0.5), "discs.png")
    made = targets.records_targets(labels, mask.shape, mask)
    assert made["boundary"].shape == made["distance"].shape == mask.shape == (40, 50)
    assert made["distance"].dtype == np.uint8 and made["distance"].max() == targets.DISTANCE_LEVELS
    assert (made["distance"][mask == 0] == 0).all()
    small = targets.resize_labels(labels, mask.shape) * mask
    assert (made["boundary"][(mask > 0) & (small == 0)] == 1).all()
    # The two discs are still two stones in the record, parted by the band.
    cores = (mask > 0) & (made["boundary"] == 0)
    assert cv2.connectedComponents(cores.view(np.uint8), connectivity=8)[0] - 1 == 3


def test_build_records_reads_instance_label_masks_as_their_stones(tmp_path):
    """A 16-bit label mask (Cellpose's layout): the record's mask parts touching stones by a gap, and the
    targets come from the labels, so two stones that touch with no gap at all are still two."""
    from tools.build_records import decode_pair
    from stoneseg.pairs import Pair

    labels = np.zeros((64, 96), np.uint16)
    labels[10:50, 10:48] = 7
    labels[10:50, 48:86] = 300  # touching stone 7 along a straight seam
    photo = np.where(labels[..., None] > 0, 200, 40).astype(np.uint8).repeat(3, axis=2)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(io.encode_png(photo))
    assert cv2.imwrite(str(tmp_path / "masks" / "a.tif"), labels)
    example = decode_pair(tmp_path, Pair("images/a.png", "masks/a.tif"), io.Scale(1))
    mask = cv2.imdecode(np.frombuffer(example.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask[30, 47] == mask[30, 48] == 0 and mask[30, 46] == mask[30, 49] == 1  # the seam became a gap
    assert cv2.connectedComponents(mask, connectivity=8)[0] - 1 == 2
    distance = cv2.imdecode(np.frombuffer(example.distance_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert distance[30, 28] == distance[30, 67] == targets.DISTANCE_LEVELS  # each stone's own centre


# ----------------------------------------------------------------------------- the targets in the train step
def marked_batch(output, size=96):
    """One record whose photo carries its own targets as colours, so that after any transform the photo says
    where each target should be: red = 255 on the mask, green = 255 on the boundary band, blue = the distance
    (0..255, as stored). An L-shaped stone off-centre, so every rotation and flip moves it visibly."""
    labels = np.zeros((size, size), np.int32)
    labels[12:70, 14:34] = 1
    labels[50:70, 34:80] = 2
    mask = (labels > 0).astype(np.uint8)
    made = targets.records_targets(labels, mask.shape, mask)
    photo = np.stack([mask * 255, made["boundary"] * 255, made["distance"]], axis=-1).astype(np.uint8)
    return photo[None], np.stack([mask, made[output]], axis=-1)[None]


@pytest.mark.parametrize("output", ["boundary", "distance"])
def test_targets_follow_the_crop_rotation_and_flips_of_the_photo(output):
    """Many random crops, rotations (always on) and flips of the marked record: the mask and the band (nearest)
    agree with the photo's own red and green marks, the distance (bilinear, with the photo) equals its blue
    channel, and rotations give the distance values between the stored levels (bilinear, not nearest)."""
    photo, masks = marked_batch(output)
    crop = RandomRecordCrop(64, seed=3)
    trainer = SegmentationTrainer(build_unet((64, 64, 3), output=output),
                                  SegmentationAugmentation(rotation_probability=1.0, seed=3), crop=crop, output=output)
    photos, moved_masks = np.repeat(photo, 8, axis=0), np.repeat(masks, 8, axis=0)
    sizes = np.tile(np.array([[96, 96]], np.int32), (8, 1))
    checked = 0
    for _ in range(4):
        images, cropped_masks, weights = crop(photos, moved_masks, sizes)
        images, (stone, second), weights = trainer._augment(images, cropped_masks, weights)
        images, stone, second = (keras.ops.convert_to_numpy(x) for x in (images, stone, second))
        red, green, blue = images[..., 0] / 255, images[..., 1] / 255, images[..., 2] / 255
        assert np.mean((red >= 0.5) == (stone[..., 0] > 0.5)) > 0.97
        if output == "boundary":
            assert set(np.unique(second)) <= {0.0, 1.0}
            assert np.mean((green >= 0.5) == (second[..., 0] > 0.5)) > 0.95
        else:
            assert np.abs(blue - second[..., 0]).max() < 1e-4  # the same bilinear resampling as the photo's
            levels = second[..., 0] * targets.DISTANCE_LEVELS
            assert np.mean(np.abs(levels - np.rint(levels)) > 0.05) > 0.01  # values between the stored levels
        checked += stone.sum() > 0
    assert checked >= 2  # the crops did hold the stone
