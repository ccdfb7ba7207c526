"""A model and its scale -> probability maps: the inference that stoneseg.predict and stoneseg.evaluate share.

Photos are decoded by stoneseg.io exactly as the record builder decoded the training photos, in one of
two ways, chosen by the model (stoneseg.model.PhotoScale) or by an explicit scale:

- **squash** (a model of squashed photos: fixed input such as 256x256, no scale): each photo is
  area-resized to the model's input size, and photos run `batch_size` at a time.
- **scale F** (a model trained on photos resized by F): each photo is resized by F with its aspect ratio
  kept and runs on its own, **whole** (mirror-padded to a multiple of 32, the output cropped back) when
  the resized photo has at most `batch_size` x tile^2 pixels (4 x 512^2, about 1 MP, by default), so a
  whole photo needs no more memory than one batch of tiles; larger photos, or every photo when tiling
  is forced, run in overlapping tiles blended with a raised-cosine weight.

The probability map has the working size (the model's input size, or the photo resized by F);
`full_size_mask` upsamples it bilinearly to the photo's original size and thresholds it. A model with a
second output (train --output boundary|distance) gives a second map of the same size beside it: `maps`
returns both as channels (H, W, 2), channel 0 always the stone probability. A tiled photo
holds only the photo, its one float32 map and one batch of tiles: tiles are cut, run and blended into
the map a batch at a time.

Importing this module loads neither TensorFlow nor Keras (the commands parse their arguments first);
the functions that need Keras import it, and the caller has imported TensorFlow (cli.import_tensorflow).
"""

from __future__ import annotations  # `keras.Model` annotations: Keras is imported once it is needed

import math
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from stoneseg import io
from stoneseg.choices import OUTPUT_STRIDE
from stoneseg.cli import InputError
from stoneseg.precision import Precision, apply_to_model

if TYPE_CHECKING:
    import keras

DEFAULT_TILE = 512
DEFAULT_TILE_OVERLAP = 128


# ----------------------------------------------------------------------------- the model
def check_model_file(path: Path) -> None:
    """An InputError unless `path` can be a .keras model file (checked before Keras is imported)."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras model file (a .keras file is a zip archive, this is not)")


def load_model(path: Path, precision: Precision | None = None) -> keras.Model:
    """The saved model, loaded with safe_mode=True; it must map images to one probability per pixel, and
    may have a second output of stoneseg's (stoneseg.model.model_output) after it.

    `precision` (stoneseg.precision): the model computes in it whatever policy it was saved under (its
    input and probabilities stay float32); None keeps the saved policy.
    """
    import keras

    from stoneseg.model import FLOAT32_LAYERS, model_output  # also registers our own layers (PhotoScale)

    check_model_file(path)
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, OSError... for a bad file
        raise InputError(f"{path}: cannot be loaded as a Keras model ({type(error).__name__}: {error})") from None
    input_shape, output_shapes = model.input_shape, [tuple(tensor.shape) for tensor in model.outputs]
    try:
        model_output(model)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
    if len(input_shape) != 4 or input_shape[-1] != 3 or any(shape[1:] != (*input_shape[1:3], 1)
                                                            for shape in output_shapes):
        raise InputError(f"{path}: expected a model from RGB images (N, H, W, 3) to one probability per pixel "
                         f"(N, H, W, 1), got {input_shape} -> {', '.join(map(str, output_shapes))}")
    if precision is not None:
        apply_to_model(model, precision, keep_float32=FLOAT32_LAYERS)
    return model


def model_input_size(model: keras.Model) -> tuple[int, int] | None:
    """The (height, width) the model takes, or None if it takes any size."""
    height, width = model.input_shape[1:3]
    return None if height is None or width is None else (height, width)


def any_size_model(model: keras.Model) -> keras.Model:
    """`model` if it takes images of any size, else the same network with the same weights rebuilt for
    any size (it is fully convolutional)."""
    if model.input_shape[1:3] == (None, None):
        return model
    import keras

    rebuilt = keras.models.clone_model(model, input_tensors=keras.Input((None, None, 3), dtype=model.inputs[0].dtype))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def run_model(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The maps (N, H, W, C) float32 for images (N, H, W, 3), N <= batch_size: the model's outputs side by
    side, channel 0 the stone probability (C = 1 for a binary model, 2 with a second output).

    A short batch is padded to `batch_size`, so the model's predict function is traced only once.
    """
    count = len(images)
    if count < batch_size:
        images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
    outputs = model.predict_on_batch(images)
    if isinstance(outputs, (list, tuple)):
        return np.concatenate([np.asarray(output, np.float32)[:count] for output in outputs], axis=-1)
    return np.asarray(outputs, np.float32)[:count]


# ----------------------------------------------------------------------------- one photo, whole or tiled
def whole_maps(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """The (H, W, C) float32 maps of `image` in one pass of a model that takes any size (`run_model`): the
    image is mirrored out at the bottom and right to a multiple of OUTPUT_STRIDE, the output cropped back."""
    height, width = image.shape[:2]
    short_y, short_x = -height % OUTPUT_STRIDE, -width % OUTPUT_STRIDE
    if short_y or short_x:
        image = _mirror_out(image, short_y, short_x)
    return np.ascontiguousarray(run_model(model, image[None], 1)[0, :height, :width])


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile offsets along one axis, neighbours overlapping by at least `overlap` pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [int(start) for start in np.round(np.linspace(0, length - tile, count))]


def blend_windows(length: int, starts: list[int], tile: int, overlap: int) -> list[np.ndarray]:
    """Each tile's weights along one axis, adding up to exactly 1 at every pixel.

    A tile's window ramps up smoothly (raised cosine) over `overlap` pixels on each side where another
    tile overlaps it, so the pixels near a tile's edge, which the network sees with little context,
    count least. The product of a row and a column window weights a tile's 2-D probabilities.
    """
    ramp = np.sin(np.pi / 2 * (np.arange(overlap) + 0.5) / overlap) ** 2  # from near 0 up to near 1
    windows = []
    for index, start in enumerate(starts):
        window = np.ones(min(tile, length - start))  # only a lone tile can be shorter than `tile`
        if overlap and index > 0:
            window[:overlap] = ramp
        if overlap and index < len(starts) - 1:
            window[-overlap:] = np.minimum(window[-overlap:], ramp[::-1])
        windows.append(window)
    total = np.zeros(length)
    for start, window in zip(starts, windows):
        total[start:start + len(window)] += window
    return [(window / total[start:start + len(window)]).astype(np.float32) for start, window in zip(starts, windows)]


def tiled_maps(model: keras.Model, photo: np.ndarray, tile: int, overlap: int, batch_size: int) -> np.ndarray:
    """The (H, W, C) float32 maps of `photo` (`run_model`) from overlapping `tile` x `tile` tiles.

    `model` takes tiles of that size (or any size). Tiles are cut, run `batch_size` at a time and
    blended into the one map, so memory beyond the photo and the map is one batch of tiles. A photo
    smaller than a tile is mirrored out to the tile size.
    """
    height, width = photo.shape[:2]
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    row_windows = blend_windows(height, rows, tile, overlap)
    column_windows = blend_windows(width, columns, tile, overlap)
    positions = [(row, column) for row in range(len(rows)) for column in range(len(columns))]
    maps = None
    for first in range(0, len(positions), batch_size):
        batch = positions[first:first + batch_size]
        tiles = np.stack([_cut_tile(photo, rows[row], columns[column], tile) for row, column in batch])
        for (row, column), tile_maps in zip(batch, run_model(model, tiles, batch_size)):
            if maps is None:
                maps = np.zeros((height, width, tile_maps.shape[-1]), np.float32)
            row_window, column_window = row_windows[row], column_windows[column]
            y, x = rows[row], columns[column]
            weight = np.outer(row_window, column_window)[..., None]
            maps[y:y + len(row_window), x:x + len(column_window)] += tile_maps[:len(row_window), :len(column_window)] * weight
    return maps


def _cut_tile(photo: np.ndarray, y: int, x: int, tile: int) -> np.ndarray:
    crop = photo[y:y + tile, x:x + tile]
    short_y, short_x = tile - crop.shape[0], tile - crop.shape[1]
    return _mirror_out(crop, short_y, short_x) if short_y or short_x else crop


def _mirror_out(image: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """`image` extended by `bottom` rows and `right` columns mirrored from its edge (OpenCV mirrors
    again as often as needed when the image is smaller than what is added)."""
    return cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REFLECT_101)


# ----------------------------------------------------------------------------- how photos reach a model
class Inference:
    """One model and how photos reach it: squashed to its input size in batches, or resized by a scale
    and run one at a time, whole or tiled (see the module's docstring).

    `scale`: overrides the model's own (model_scale); a model with neither is a squash model, unless
    tiling is forced, which runs it at full resolution (scale 1). `tile`: the tile size; `force_tile`
    tiles every photo instead of only those larger than one batch of tiles.
    """

    def __init__(self, model: keras.Model, scale: float | None = None, tile: int = DEFAULT_TILE,
                 force_tile: bool = False, overlap: int = DEFAULT_TILE_OVERLAP, batch_size: int = 4,
                 name: str = "the model"):
        from stoneseg.model import model_output, model_scale

        if scale is not None:
            self.scale, self.scale_origin = float(scale), "given"
        elif model_scale(model) is not None:
            self.scale, self.scale_origin = model_scale(model), "the model's"
        elif force_tile:
            self.scale, self.scale_origin = 1.0, "full resolution for tiles"
        elif model_input_size(model) is None:
            raise InputError(f"{name} takes images of any size and records no scale, so there is no size to "
                             "resize photos to; pass --scale F (or --tile for full resolution)")
        else:
            self.scale, self.scale_origin = None, "squash"
        if self.scale is not None and not 0 < self.scale <= 1:
            raise InputError(f"scale must be in (0, 1], got {self.scale:g}")
        if not 0 <= overlap < tile or tile % OUTPUT_STRIDE:
            raise ValueError(f"tile {tile} must be a multiple of {OUTPUT_STRIDE} and overlap {overlap} in [0, tile)")
        self.model, self.tile, self.force_tile, self.overlap, self.batch_size = model, tile, force_tile, overlap, batch_size
        self.output = model_output(model)  # "binary", or the second output's kind (stoneseg.stones.stones_of)
        # A squash model runs as it is; a scaled photo can have any size.
        self.network = model if self.scale is None else any_size_model(model)

    @property
    def batched(self) -> bool:
        """True for squash: same-size photos run `batch_size` at a time through `probabilities`; else one at
        a time through `probability`."""
        return self.scale is None

    @property
    def size(self) -> io.Size:
        """What io.read_photo and io.read_mask resize to: the model's input size, or io.Scale(F)."""
        return model_input_size(self.model) if self.scale is None else io.Scale(self.scale)

    @property
    def whole_limit(self) -> int:
        """The most pixels a resized photo may have to run whole: those of one batch of tiles."""
        return self.batch_size * self.tile ** 2

    def tiles(self, height: int, width: int) -> bool:
        """Whether a resized photo of (height, width) runs in tiles."""
        return self.force_tile or height * width > self.whole_limit

    def batch_maps(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) float32 maps (`run_model`) of up to `batch_size` squashed photos (N, H, W, 3)."""
        return run_model(self.network, images, self.batch_size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) float32 stone probabilities of up to `batch_size` squashed photos (N, H, W, 3)."""
        return self.batch_maps(images)[..., 0]

    def maps(self, image: np.ndarray) -> np.ndarray:
        """The (H, W, C) float32 maps (`run_model`) of one photo resized by the scale, whole or tiled."""
        if self.tiles(*image.shape[:2]):
            return tiled_maps(self.network, image, self.tile, self.overlap, self.batch_size)
        return whole_maps(self.network, image)

    def probability(self, image: np.ndarray) -> np.ndarray:
        """The (H, W) float32 stone probability of one photo resized by the scale, whole or tiled."""
        return np.ascontiguousarray(self.maps(image)[..., 0])

    def describe(self) -> str:
        """How photos are fed, in a few words, for progress lines and reports."""
        if self.scale is None:
            return "squashed to {}x{}".format(*model_input_size(self.model))
        tiles = f"{self.tile}x{self.tile} tiles overlapping by {self.overlap}"
        how = f"in {tiles}" if self.force_tile else \
            f"whole up to {self.whole_limit / 1e6:.2g} MP, larger in {tiles}"
        return f"resized by {self.scale:g} ({self.scale_origin}), {how}"


def full_size_mask(probability: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """The uint8 0/255 mask of `size` (height, width): the probability map upsampled bilinearly to
    that size, then thresholded (stone where probability >= threshold, as keras.metrics.BinaryIoU)."""
    height, width = size
    if probability.shape != (height, width):
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.compare(probability, threshold, cv2.CMP_GE)


# ----------------------------------------------------------------------------- decoding ahead
def decode_ahead(pool: ThreadPoolExecutor, decode, items: list, depth: int):
    """Yield (item, decode(item)) in order, or (item, the io.ImageError), keeping `depth` decodes
    running ahead on `pool` (0: each decode starts when its item is asked for)."""
    pending = deque()
    for item in items:
        pending.append((item, pool.submit(decode, item)))
        if len(pending) > depth:
            yield _outcome(*pending.popleft())
    while pending:
        yield _outcome(*pending.popleft())


def _outcome(item, future):
    try:
        return item, future.result()
    except io.ImageError as error:
        return item, error
