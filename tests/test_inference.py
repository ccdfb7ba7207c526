"""stoneseg.inference: how each kind of model is fed (squash, scale whole, scale tiled, overrides), whole and
tiled maps agree, and a tiled photo holds no hidden full-size copy."""

import tracemalloc

import cv2
import numpy as np
import pytest
from tiny_models import brightness, brightness_model

from stoneseg import inference, io
from stoneseg.inference import Inference, InputError


def smooth_photo(height, width, seed=0):
    """A smooth RGB photo that crosses grey 128 often, so a brightness map has both classes everywhere."""
    noise = np.random.default_rng(seed).integers(0, 256, (19, 27, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


# ----------------------------------------------------------------------------- which way each kind is fed
def test_a_squash_model_takes_photos_squashed_to_its_input_size_in_batches(network_inputs):
    feed = Inference(brightness_model(64), batch_size=3)
    assert feed.batched and feed.scale is None and feed.size == (64, 64)
    assert feed.describe() == "squashed to 64x64"
    images = np.stack([smooth_photo(64, 64, seed) for seed in range(3)])
    probabilities = feed.probabilities(images)
    assert network_inputs == [(3, 64, 64, 3)]
    assert probabilities.shape == (3, 64, 64)
    assert np.allclose(probabilities, [brightness(image) for image in images], atol=1e-5)


def test_a_scale_model_runs_a_photo_whole_up_to_one_batch_of_tiles_and_tiled_above(network_inputs):
    feed = Inference(brightness_model(None, scale=0.5), tile=64, overlap=16, batch_size=2)
    assert not feed.batched and feed.scale == 0.5 and feed.size == io.Scale(0.5)
    assert feed.whole_limit == 2 * 64 * 64
    assert "resized by 0.5 (the model's)" in feed.describe() and "whole up to" in feed.describe()

    small = smooth_photo(70, 100)  # 7,000 pixels <= 8,192: whole, padded to 96 x 128
    probability = feed.probability(small)
    assert network_inputs == [(1, 96, 128, 3)]
    assert probability.shape == (70, 100) and probability.flags.c_contiguous
    assert np.allclose(probability, brightness(small), atol=1e-5)  # the padding is cropped off

    network_inputs.clear()
    large = smooth_photo(90, 100)  # 9,000 pixels > 8,192: tiles of 64, 2 per model call
    rows, columns = inference.tile_starts(90, 64, 16), inference.tile_starts(100, 64, 16)
    probability = feed.probability(large)
    assert len(rows) * len(columns) == 4 and network_inputs == [(2, 64, 64, 3), (2, 64, 64, 3)]
    assert probability.shape == (90, 100)
    assert np.allclose(probability, brightness(large), atol=1e-5)


def test_forced_tiles_tile_even_a_small_photo(network_inputs):
    feed = Inference(brightness_model(None, scale=0.5), tile=64, force_tile=True, overlap=16, batch_size=4)
    assert feed.tiles(40, 40) and "in 64x64 tiles" in feed.describe()
    feed.probability(smooth_photo(40, 40))
    assert network_inputs == [(1, 64, 64, 3)]  # a photo smaller than a tile is mirrored out to one tile


def test_scale_override_wins_over_the_models_scale_and_runs_a_squash_model_at_that_scale(network_inputs):
    assert Inference(brightness_model(None, scale=0.5), scale=0.25).size == io.Scale(0.25)
    feed = Inference(brightness_model(64), scale=0.5)  # a squash model, run at scale 0.5 instead
    assert not feed.batched and feed.size == io.Scale(0.5) and "(given)" in feed.describe()
    photo = smooth_photo(50, 70)
    probability = feed.probability(photo)  # the 64 x 64 network, rebuilt for any size
    assert network_inputs == [(1, 64, 96, 3)] and probability.shape == (50, 70)
    assert np.allclose(probability, brightness(photo), atol=1e-5)


def test_tiles_without_a_scale_run_at_full_resolution(network_inputs):
    assert Inference(brightness_model(None), force_tile=True).size == io.Scale(1.0)
    feed = Inference(brightness_model(64), tile=96, force_tile=True, overlap=32)  # a squash model, tiled
    assert feed.size == io.Scale(1.0) and not feed.batched
    photo = smooth_photo(100, 150)
    probability = feed.probability(photo)  # its 64 x 64 network rebuilt for 96 x 96 tiles
    assert network_inputs == [(4, 96, 96, 3)] and probability.shape == (100, 150)
    assert np.allclose(probability, brightness(photo), atol=1e-5)


def test_a_model_of_any_size_without_a_scale_needs_one():
    with pytest.raises(InputError, match=r"my.keras takes images of any size and records no scale.*--scale F"):
        Inference(brightness_model(None), name="my.keras")
    with pytest.raises(InputError, match=r"scale must be in \(0, 1\]"):
        Inference(brightness_model(64), scale=1.5)


# ----------------------------------------------------------------------------- whole and tiled maps
def test_blend_windows_add_up_to_one_everywhere():
    for length, tile, overlap in ((1000, 256, 64), (300, 128, 32), (129, 128, 8), (90, 128, 32), (512, 128, 0)):
        starts = inference.tile_starts(length, tile, overlap)
        windows = inference.blend_windows(length, starts, tile, overlap)
        total = np.zeros(length)
        for start, window in zip(starts, windows):
            assert len(window) == min(tile, length - start) and (window > 0).all()
            total[start:start + len(window)] += window
        assert starts[0] == 0 and starts[-1] + len(windows[-1]) == length
        assert np.allclose(total, 1, atol=1e-6)
        if len(starts) > 1:
            assert min(np.diff(starts)) <= tile - overlap  # neighbours overlap by at least `overlap`


def test_tiled_inference_matches_one_whole_photo_pass_on_a_smooth_model():
    photo = smooth_photo(300, 420)
    model = brightness_model(None, blur=2.0)
    whole = model.predict(photo[None], verbose=0)[0, ..., 0]
    tiled = inference.tiled_maps(model, photo, tile=128, overlap=32, batch_size=4)[..., 0]
    assert tiled.shape == whole.shape == (300, 420)
    difference = np.abs(tiled - whole)
    assert difference.mean() < 1e-3 and difference.max() < 0.05  # tile edges count little
    assert np.mean((tiled >= 0.5) == (whole >= 0.5)) > 0.99
    assert 0.2 < np.mean(whole >= 0.5) < 0.8  # the test photo really has both classes
    padded = inference.whole_maps(model, photo)[..., 0]  # mirrored out to 320 x 448: differs only near the far edges
    assert padded.shape == (300, 420) and np.abs(padded - whole)[:-8, :-8].max() < 1e-5


def test_a_tiled_photo_holds_no_full_size_copy_beyond_its_map():
    """NumPy's allocations while a 600 x 800 photo is tiled: the float32 map (1.92 MB) and tile-sized
    buffers only (0.45 MB measured). A copy of the photo (1.44 MB; 5.8 MB as float32), of the map, or all
    tiles at once would show."""
    model = brightness_model(None)
    photo = smooth_photo(600, 800)
    inference.tiled_maps(model, photo[:128, :128], tile=128, overlap=32, batch_size=2)  # trace once
    tracemalloc.start()
    try:
        probability = inference.tiled_maps(model, photo, tile=128, overlap=32, batch_size=2)[..., 0]  # a view
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    map_bytes = probability.nbytes
    assert map_bytes == 600 * 800 * 4
    assert peak < map_bytes + 1_000_000, f"peak {peak:,} bytes for a {map_bytes:,}-byte map"
    assert np.mean((probability >= 0.5) == (brightness(photo) >= 0.5)) > 0.999


def test_full_size_mask_is_the_upsampled_map_thresholded():
    probability = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    mask = inference.full_size_mask(probability, (4, 6), 0.5)
    assert mask.shape == (4, 6) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert mask[0, 0] == 0 and mask[0, -1] == 255 and mask[-1, 0] == 255 and mask[-1, -1] == 0
    same = np.full((3, 5), 0.5, np.float32)
    assert (inference.full_size_mask(same, (3, 5), 0.5) == 255).all()  # at the threshold is stone
