"""stoneseg.io: reduced decode equals full decode, EXIF orientation, binary masks, and bad files caught."""

import json

import cv2
import numpy as np
import pytest
from jpeg_exif import ORIENT, with_corrupt_exif, with_exif_orientation

from stoneseg import io


def write_jpeg(path, bgr, quality=95):
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buffer.tobytes())
    return path




def textured_bgr(height, width, seed=0):
    """A smooth but non-trivial colour picture, so orientation and resizing errors show."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("size, factor", [(256, 2), (128, 4)])
def test_reduced_decode_matches_full_decode_on_a_real_photo(stones20, size, factor):
    """Image12 (2000x1500, the largest) read via DCT-reduced decode vs full decode + the same area resize."""
    photo = stones20 / "Image12.JPG"
    reduced, original = io.read_photo(photo, size)
    full = cv2.cvtColor(cv2.imread(str(photo), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    reference = cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA)
    assert original == full.shape[:2] == (1500, 2000)
    assert io._reduction(original, (size, size)) == factor  # the path under test really is reduced
    assert reduced.shape == (size, size, 3) and reduced.dtype == np.uint8
    difference = np.abs(reduced.astype(np.int16) - reference).mean()
    assert difference < 2.0, f"mean absolute difference {difference:.2f} grey levels"


def test_every_real_mask_reads_as_exactly_0_and_1_with_its_recorded_stone_fraction(stones20):
    sources = {s["file"]: s for s in json.loads((stones20 / "SOURCES.json").read_text())}
    for name, source in sources.items():
        mask, original = io.read_mask(stones20 / name.replace(".JPG", "_label.jpg"), 256)
        assert mask.shape == (256, 256) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert original == (source["height"], source["width"])
        assert abs(mask.mean() - source["stone_fraction"]) < 0.02, name


def test_photo_is_rgb_at_the_requested_size_and_reports_the_original_size(tmp_path):
    bgr = np.zeros((60, 90, 3), np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb, original = io.read_photo(tmp_path / "red.png", (20, 30))
    assert rgb.shape == (20, 30, 3) and original == (60, 90)
    assert (rgb[..., 0] == 200).all() and (rgb[..., 1:] == 0).all()
    full = io.read_photo_full(tmp_path / "red.png")
    assert full.shape == (60, 90, 3) and (full[..., 0] == 200).all()


@pytest.mark.parametrize("factor, reduction", [(0.5, cv2.IMREAD_REDUCED_COLOR_2), (0.125, cv2.IMREAD_REDUCED_COLOR_8)])
def test_power_of_two_scale_is_the_reduced_decode_alone(tmp_path, factor, reduction):
    """Scale(1/2^k) keeps the aspect ratio (odd sides round up, as libjpeg does) and its pixels are
    exactly libjpeg's reduced decode: no full decode, no resize after it."""
    path = write_jpeg(tmp_path / "photo.jpg", textured_bgr(203, 301))
    photo, original = io.read_photo(path, io.Scale(factor))
    expected = cv2.cvtColor(cv2.imread(str(path), reduction), cv2.COLOR_BGR2RGB)
    assert original == (203, 301)
    assert photo.shape[:2] == (-(-203 * factor // 1), -(-301 * factor // 1)) == expected.shape[:2]
    np.testing.assert_array_equal(photo, expected)


def test_other_scales_resize_photo_and_mask_alike(tmp_path):
    photo_path = write_jpeg(tmp_path / "photo.jpg", textured_bgr(200, 300))
    mask = np.zeros((200, 300), np.uint8)
    mask[40:120, 90:210] = 255
    mask_path = tmp_path / "mask.png"
    mask_path.write_bytes(io.encode_png(mask))
    photo, _ = io.read_photo(photo_path, io.Scale(0.3))
    small_mask, original = io.read_mask(mask_path, io.Scale(0.3))
    assert photo.shape == (60, 90, 3) and small_mask.shape == (60, 90) and original == (200, 300)
    assert small_mask[12:36, 27:63].all() and small_mask.sum() == 24 * 36  # 40..120 x 90..210 times 0.3


@pytest.mark.parametrize("factor", [0.0, -0.5, 1.01])
def test_scale_outside_0_1_is_rejected(factor):
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        io.Scale(factor)


def test_grey_jpeg_photo_becomes_three_equal_channels(tmp_path):
    grey = textured_bgr(64, 64)[..., 0]
    write_jpeg(tmp_path / "grey.jpg", grey)
    rgb, _ = io.read_photo(tmp_path / "grey.jpg", 16)
    assert rgb.shape == (16, 16, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


@pytest.mark.parametrize("size", [0, -3, (4,), (4, 0), 2.5, "8"])
def test_bad_size_is_rejected(tmp_path, size):
    with pytest.raises(ValueError, match="size"):
        io.target_size(size)


def marked_pair(height=96, width=160):
    """A stored (not yet oriented) photo and mask sharing an L-shaped mark with no symmetry, so that any
    flip or turn shows: the mark is bright in the textured photo and 255 in the mask."""
    mask = np.zeros((height, width), np.uint8)
    mask[8:72, 16:40] = 255  # the L's upright, near the top left
    mask[56:72, 40:104] = 255  # its foot
    photo = textured_bgr(height, width) // 3
    photo[mask > 0] = 230
    return photo, mask


@pytest.mark.parametrize("big_endian", [False, True], ids=["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_photo_and_mask_alike(tmp_path, orientation, big_endian):
    """Photo and mask stored 160 wide x 96 high with the same EXIF orientation: both come out turned as
    ORIENT (NumPy) says, at full size exactly and through the reduced decode, with the mark in the mask
    exactly where it is in the photo. Orientations 2, 3 and 4 keep the shape, so only pixels show them."""
    stored_photo, stored_mask = marked_pair()
    photo_path, mask_path = tmp_path / "photo.jpg", tmp_path / "photo_label.jpg"
    for path, image in ((photo_path, stored_photo), (mask_path, stored_mask)):
        plain = write_jpeg(path, image).read_bytes()
        path.write_bytes(with_exif_orientation(plain, orientation, big_endian))
    as_stored = cv2.imread(str(photo_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]
    oriented = ORIENT[orientation](as_stored)
    height, width = oriented.shape[:2]

    np.testing.assert_array_equal(io.read_photo_full(photo_path), oriented)

    size = (height // 4, width // 4)  # read through libjpeg's 1/2 decode
    photo, photo_size = io.read_photo(photo_path, size)
    mask, mask_size = io.read_mask(mask_path, size)
    assert photo_size == mask_size == (height, width) and io._reduction(photo_size, size) == 2
    reference = cv2.resize(oriented, size[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(photo.astype(np.int16) - reference).mean() < 3
    expected_mask = cv2.resize(ORIENT[orientation](stored_mask), size[::-1], interpolation=cv2.INTER_AREA)
    assert np.mean(mask == (expected_mask > io.MASK_THRESHOLD)) > 0.98
    assert np.mean(mask == (photo.mean(axis=2) > 127)) > 0.97  # the mask lines up with its photo


def test_a_corrupt_exif_block_is_read_as_stored_with_a_warning(tmp_path, capsys):
    stored_photo, _ = marked_pair()
    path = tmp_path / "broken_exif.jpg"
    path.write_bytes(with_corrupt_exif(write_jpeg(tmp_path / "plain.jpg", stored_photo).read_bytes()))
    photo, original = io.read_photo(path, (24, 40))
    assert original == (96, 160) and photo.shape == (24, 40, 3)
    np.testing.assert_array_equal(io.read_photo_full(path), io.read_photo_full(tmp_path / "plain.jpg"))
    warning = capsys.readouterr().err
    assert f"warning: {path}: corrupt EXIF block" in warning and "used as stored" in warning


def test_jpeg_mask_ringing_passes_and_thresholds_to_0_1(tmp_path):
    mask = np.zeros((200, 300), np.uint8)
    cv2.circle(mask, (100, 100), 60, 255, -1)
    cv2.rectangle(mask, (200, 20), (280, 180), 255, -1)
    write_jpeg(tmp_path / "m.jpg", mask, quality=50)  # heavy ringing around the edges
    read, original = io.read_mask(tmp_path / "m.jpg", 50)
    assert original == (200, 300) and read.shape == (50, 50)
    assert set(np.unique(read)) == {0, 1}
    expected = (cv2.resize(mask, (50, 50), interpolation=cv2.INTER_AREA) > io.MASK_THRESHOLD).astype(np.uint8)
    assert np.mean(read != expected) < 0.01


def test_mask_saved_as_colour_jpeg_but_black_white_passes(tmp_path):
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[16:48, 16:48] = 255
    write_jpeg(tmp_path / "m.jpg", mask, quality=70)
    read, _ = io.read_mask(tmp_path / "m.jpg", 32)
    assert read[8:24, 8:24].all() and not read[:6].any()


def test_colour_mask_is_rejected(tmp_path):
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[16:48, 16:48] = (0, 0, 255)  # red stones on black
    cv2.imwrite(str(tmp_path / "red_label.png"), mask)
    with pytest.raises(io.ImageError, match=r"red_label\.png: mask is not black/white: .* coloured"):
        io.read_mask(tmp_path / "red_label.png", 32)


def test_grey_mask_is_rejected(tmp_path):
    gradient = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (64, 1))  # a soft map, not a mask
    write_jpeg(tmp_path / "soft_label.jpg", gradient)
    with pytest.raises(io.ImageError, match=r"soft_label\.jpg: mask is not black/white: .* mid-grey"):
        io.read_mask(tmp_path / "soft_label.jpg", 32)


def test_real_photo_used_as_a_mask_is_rejected(stones20):
    with pytest.raises(io.ImageError, match="Image14.JPG: mask is not black/white"):
        io.read_mask(stones20 / "Image14.JPG", 256)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.05])
def test_truncated_jpeg_is_rejected(tmp_path, stones20, keep):
    data = (stones20 / "Image14.JPG").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * keep)])
    # OpenCV alone would hand back a grey-filled picture for this (cv2.imread prints a warning only).
    with pytest.raises(io.ImageError, match=r"cut\.jpg: truncated JPEG"):
        io.read_photo(cut, 64)


def test_progressive_jpeg_reads_reduced_and_its_truncation_is_caught(tmp_path):
    bgr = textured_bgr(96, 128)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 95])
    (tmp_path / "progressive.jpg").write_bytes(buffer.tobytes())
    rgb, original = io.read_photo(tmp_path / "progressive.jpg", 32)
    assert original == (96, 128) and io._reduction(original, (32, 32)) == 2
    reference = cv2.resize(bgr[..., ::-1], (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(rgb.astype(np.int16) - reference).mean() < 3
    (tmp_path / "cut.jpg").write_bytes(buffer.tobytes()[: len(buffer) * 3 // 4])
    with pytest.raises(io.ImageError, match="truncated JPEG"):
        io.read_photo(tmp_path / "cut.jpg", 32)


def test_truncated_png_is_rejected(tmp_path):
    ok, buffer = cv2.imencode(".png", textured_bgr(64, 64))
    (tmp_path / "cut.png").write_bytes(buffer.tobytes()[:-20])
    with pytest.raises(io.ImageError, match=r"cut\.png: corrupt, truncated or unsupported image data"):
        io.read_photo(tmp_path / "cut.png", 16)


def test_truncated_header_is_rejected(tmp_path):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(write_jpeg(tmp_path / "whole.jpg", textured_bgr(32, 32)).read_bytes()[:40])
    with pytest.raises(io.ImageError, match=r"cut\.jpg: truncated JPEG \(the file ends inside its header\)"):
        io.read_photo(cut, 8)


def test_corrupt_files_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.JPG"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(io.ImageError, match=r"garbage\.JPG: corrupt, truncated or unsupported image data"):
        io.read_photo(garbage, 8)

    data = bytearray(write_jpeg(tmp_path / "whole.jpg", textured_bgr(32, 32)).read_bytes())
    tables = data.find(b"\xff\xc4")  # wreck the Huffman tables, keep the markers
    data[tables + 5:tables + 30] = b"\xff" * 25
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bytes(data))
    with pytest.raises(io.ImageError, match=r"broken\.jpg: corrupt"):
        io.read_photo(broken, 8)


def test_empty_and_missing_files_are_rejected(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(io.ImageError, match=r"empty\.jpg: empty file"):
        io.read_photo(tmp_path / "empty.jpg", 8)
    with pytest.raises(io.ImageError, match=r"absent\.png: cannot be read"):
        io.read_mask(tmp_path / "absent.png", 8)


def test_image_error_survives_pickling_between_processes():
    import pickle

    error = pickle.loads(pickle.dumps(io.ImageError("a.jpg", "truncated JPEG")))
    assert (error.file, error.problem, str(error)) == ("a.jpg", "truncated JPEG", "a.jpg: truncated JPEG")


def test_encode_png_round_trips_rgb_and_masks():
    rgb = textured_bgr(24, 40)
    back = cv2.imdecode(np.frombuffer(io.encode_png(rgb), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[..., ::-1], rgb)  # OpenCV decodes PNG to BGR
    mask = (rgb[..., 0] > 128).astype(np.uint8)
    assert np.array_equal(cv2.imdecode(np.frombuffer(io.encode_png(mask), np.uint8), cv2.IMREAD_UNCHANGED), mask)


def test_encode_jpeg_keeps_rgb_order():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    back = cv2.imdecode(np.frombuffer(io.encode_jpeg(rgb, 95), np.uint8), cv2.IMREAD_COLOR)  # BGR
    assert abs(int(back[..., 2].mean()) - 200) <= 3 and back[..., 0].mean() < 5
