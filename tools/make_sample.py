"""Write the built-in synthetic sample: photo-like stones on a conveyor belt, with exact masks.

    python -m tools.make_sample [--out data/sample] [--count 20] [--height 3456] [--width 4806]

Each photo `ImageNN.JPG` (JPEG quality 90, like a camera's) shows irregular stones of varied size,
colour, shading and texture, some touching, lit from one side and casting soft shadows on a ribbed
rubber belt. Its mask `ImageNN_label.jpg` is the prototype's layout: 255 = stone interior, 0 =
background, and the thin boundary where two stones touch is background too. The mask is drawn from
the same polygons as the photo and stored at JPEG quality 100, so thresholding at 127 gives it back.

Image NN is drawn from its own random stream, derived from (seed, NN), so a seed gives
byte-identical files however many worker processes run (on the same machine and library versions).
Smooth fields (shading, belt, shadows) are computed at about 1/4 resolution and upsampled; only the
stone outlines, the fine grain and the sensor noise are drawn at full size.
"""

import argparse
import math
import re
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from stoneseg import cli
from stoneseg.files import recover, staged_folder
from stoneseg.io import MASK_THRESHOLD

PHOTO_QUALITY = 90
MASK_QUALITY = 100
SAMPLE_FILE = re.compile(r"Image\d+(_label)?\.(JPG|jpg)")
# Base colours of the stones (BGR, 0..1): granite, basalt, sandstone, red granite, flint, quartz, greenstone.
STONE_COLOURS = np.array([
    [0.56, 0.57, 0.59], [0.26, 0.27, 0.29], [0.52, 0.62, 0.70], [0.45, 0.50, 0.63],
    [0.34, 0.40, 0.47], [0.76, 0.78, 0.80], [0.42, 0.47, 0.45],
], dtype=np.float32)


# ----------------------------------------------------------------------------- the geometry
@dataclass(frozen=True)
class Stone:
    """A star-shaped outline: radius `radii[j]` (pixels) at angle 2*pi*j/len(radii) around (cx, cy)."""
    cx: float
    cy: float
    radii: np.ndarray

    def polygon(self) -> np.ndarray:
        angles = np.linspace(0, 2 * np.pi, len(self.radii), endpoint=False)
        return np.stack([self.cx + self.radii * np.cos(angles), self.cy + self.radii * np.sin(angles)], axis=1)

    def bounds(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the pixels the stone can touch, clipped to the image."""
        (left, top), (right, bottom) = self.polygon().min(0), self.polygon().max(0)
        return (max(0, math.floor(left)), max(0, math.floor(top)),
                min(width, math.ceil(right) + 1), min(height, math.ceil(bottom) + 1))


def random_outline(rng: np.random.Generator, radius: float, vertices: int = 128) -> np.ndarray:
    """Radii of an irregular stone: a rounded pebble (wobbly ellipse) or an angular rock (rounded polygon)."""
    if rng.random() < 0.6:
        angles, harmonics = np.linspace(0, 2 * np.pi, 512, endpoint=False), np.arange(2, 8)[:, None]
        phases = harmonics * angles + rng.uniform(0, 2 * np.pi, (6, 1))
        wobble = (rng.normal(0, 0.10, (6, 1)) / harmonics * np.cos(phases)).sum(0)
        points = np.stack([np.cos(angles), np.sin(angles)], 1) * (1 + wobble)[:, None]
    else:
        corners = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 10)))
        corners = np.stack([np.cos(corners), np.sin(corners)], 1) * rng.uniform(0.75, 1.1, (len(corners), 1))
        along = np.linspace(0, 1, 64, endpoint=False)[:, None]
        points = np.concatenate([a + along * (b - a) for a, b in zip(corners, np.roll(corners, -1, 0))])
    aspect, turn = rng.uniform(0.55, 1.0), rng.uniform(0, np.pi)
    points = points * [1.0, aspect] @ np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]])
    # Resample in polar form at evenly spaced angles, then round the corners with a circular blur.
    angle, length = np.arctan2(points[:, 1], points[:, 0]) % (2 * np.pi), np.hypot(points[:, 0], points[:, 1])
    order = np.argsort(angle)
    radii = np.interp(np.linspace(0, 2 * np.pi, vertices, endpoint=False), angle[order], length[order],
                      period=2 * np.pi)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    radii = np.convolve(np.concatenate([radii[-6:], radii, radii[:6]]), kernel / kernel.sum(), "valid")
    return radius * radii / radii.mean()


def place_stones(rng: np.random.Generator, height: int, width: int) -> list[Stone]:
    """Scatter stones until a random 35-60 % of the belt is covered; about a third are pushed against another."""
    side = min(height, width)
    cell = max(1, side // 300)  # overlap is checked on a coarse occupancy grid
    occupied = np.zeros((height // cell + 1, width // cell + 1), np.uint8)
    target, stones = rng.uniform(0.35, 0.60), []
    for _ in range(3000):
        if occupied.mean() >= target:
            break
        radius = max(3.0, side * float(np.clip(rng.lognormal(math.log(0.055), 0.5), 0.012, 0.17)))
        if stones and rng.random() < 0.35:
            near, direction = stones[rng.integers(len(stones))], rng.uniform(0, 2 * np.pi)
            reach = near.radii.mean() + 0.9 * radius
            cx, cy = near.cx + reach * np.cos(direction), near.cy + reach * np.sin(direction)
        else:
            cx, cy = rng.uniform(-0.05, 1.05) * width, rng.uniform(-0.05, 1.05) * height
        stone = Stone(cx, cy, random_outline(rng, radius))
        footprint = np.zeros_like(occupied)
        cv2.fillPoly(footprint, [np.round(stone.polygon() / cell).astype(np.int32)], 1)
        area = footprint.sum()
        if area and np.count_nonzero(footprint & occupied) < 0.06 * area:  # a slight overlap reads as touching
            occupied |= footprint
            stones.append(stone)
    return stones


def draw_labels(stones: list[Stone], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Label map (stone k is number k+1, later stones on top, 0 = belt) and the 0/255 mask.

    A stone pixel within a few pixels of another stone is boundary, background in the mask: there the
    largest and the smallest stone number nearby differ (the belt counts as 0 for the largest and is
    left out of the smallest).
    """
    labels = np.zeros((height, width), np.uint16)
    for number, stone in enumerate(stones, start=1):  # 4 fractional bits keep the outlines sub-pixel exact
        cv2.fillPoly(labels, [np.round(stone.polygon() * 16).astype(np.int32)], number, cv2.LINE_8, shift=4)
    gap = 2 * max(1, round(min(height, width) * 0.0008)) + 1
    kernel = np.ones((gap, gap), np.uint8)
    largest = cv2.dilate(labels, kernel)
    smallest = cv2.erode(np.where(labels == 0, np.uint16(65535), labels), kernel)
    boundary = (labels > 0) & (largest != smallest) & (smallest != 65535)
    mask = np.where((labels > 0) & ~boundary, np.uint8(255), np.uint8(0))
    return labels, mask


# ----------------------------------------------------------------------------- the rendering
def smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                 cell: float | tuple[float, float]) -> np.ndarray:
    """Unit-spread noise with blobs about `cell` pixels (or (down, across)) big: a blurred grid, upsampled."""
    (height, width), (cell_y, cell_x) = shape, np.broadcast_to(cell, 2)
    grid = (max(2, round(2 * height / cell_y)) + 1, max(2, round(2 * width / cell_x)) + 1)
    coarse = cv2.GaussianBlur(rng.standard_normal(grid, dtype=np.float32), (0, 0), 1.0,
                              borderType=cv2.BORDER_REFLECT)  # round blobs, no grid pattern
    return cv2.resize(coarse / coarse.std(), (width, height), interpolation=cv2.INTER_CUBIC)


def render_belt(rng: np.random.Generator, stones_small: np.ndarray, light: np.ndarray) -> np.ndarray:
    """The ribbed, grimy rubber belt with the stones' soft shadows, at the coarse resolution (BGR, 0..255)."""
    height, width = stones_small.shape
    side = min(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    # Raised ribs across the belt, slightly skewed: a bump profile, lit on the side facing the light.
    period, skew = width * rng.uniform(0.025, 0.045), rng.uniform(-0.04, 0.04)
    phase = 2 * np.pi * (x + skew * y) / period
    rib = np.clip(np.cos(phase), 0, None) ** 2
    rib_slope = -2 * np.clip(np.cos(phase), 0, None) * np.sin(phase)
    wear = 0.5 * smooth_noise(rng, (height, width), width / 6) \
        + 0.3 * smooth_noise(rng, (height, width), (height / 80, width / 3))  # streaks along the belt
    grime = smooth_noise(rng, (height, width), width / 25) + 0.5 * smooth_noise(rng, (height, width), width / 100)
    grime = np.clip(grime - 0.3, 0, 1.2) / 1.2
    brightness = rng.uniform(38, 62) * (1 + 0.35 * rib + 0.25 * rib_slope * light[0] + 0.10 * wear)
    # Soft shadow: the stones shifted away from the light and blurred, plus a tight contact shadow.
    shift = np.float32([[1, 0, -light[0] * side * 0.012], [0, 1, -light[1] * side * 0.012]])
    cast = cv2.GaussianBlur(cv2.warpAffine(stones_small, shift, (width, height)), (0, 0), side * 0.007 + 0.5)
    contact = cv2.GaussianBlur(stones_small, (0, 0), side * 0.002 + 0.5)
    shadow = 1 - 0.55 * np.maximum(cast, contact)
    vignette = 1 - 0.5 * ((x / width - 0.5) ** 2 + (y / height - 0.5) ** 2)
    tint = np.float32([1.02, 1.0, 0.97]) * (1 + 0.03 * rng.standard_normal(3, dtype=np.float32))
    dust = np.float32([0.60, 0.67, 0.74]) * 105  # pale grey-brown dust and dried mud
    belt = brightness[..., None] * tint
    belt = belt + grime[..., None] * (dust - belt) * 0.6
    return belt * (shadow * vignette)[..., None]


def stone_shading(stone: Stone, xs: np.ndarray, ys: np.ndarray, light: np.ndarray, flatness: float,
                  gloss: float) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse and specular light on a domed stone at pixel centres (xs, ys): flat on top, steep at the rim."""
    dx, dy = xs[None, :] - stone.cx, ys[:, None] - stone.cy
    distance = np.hypot(dx, dy) + 1e-6
    angle_index = (np.arctan2(dy, dx) % (2 * np.pi)) * (len(stone.radii) / (2 * np.pi))
    reach = np.interp(angle_index, np.arange(len(stone.radii) + 1), np.append(stone.radii, stone.radii[0]))
    tilt = (np.pi / 2) * np.clip(distance / reach, 0, 1) ** flatness
    normal = np.stack([np.sin(tilt) * dx / distance, np.sin(tilt) * dy / distance, np.cos(tilt)], -1)
    diffuse = np.clip(normal @ light, 0, None)
    halfway = (light + [0, 0, 1]) / np.linalg.norm(light + [0, 0, 1])
    specular = gloss * np.clip(normal @ halfway, 0, None) ** 40
    return (0.30 + 0.85 * diffuse).astype(np.float32), specular.astype(np.float32)


def paint_stone(rng: np.random.Generator, photo: np.ndarray, inside: np.ndarray, diffuse: np.ndarray,
                specular: np.ndarray, grain: np.ndarray, mottle: np.ndarray, blotches: np.ndarray) -> None:
    """Colour the `inside` pixels of a photo crop: a muted base colour, a second mineral in blotches,
    mottling, grain and (granite-like) speckles, under the given light."""
    base = STONE_COLOURS[rng.integers(len(STONE_COLOURS))] * rng.uniform(0.75, 1.2) * rng.uniform(0.96, 1.04, 3)
    other = base * rng.uniform(0.7, 1.3) * rng.uniform(0.94, 1.06, 3)
    mix = np.clip(0.5 + rng.uniform(0, 1.5) * blotches, 0, 1)[..., None]
    speckle = np.clip(np.abs(grain) - 2.2, 0, None) * np.sign(grain) * rng.choice([0, rng.uniform(0.2, 0.8)])
    texture = 1 + rng.uniform(0.03, 0.15) * grain + rng.uniform(0.03, 0.12) * mottle + speckle
    albedo = (base + mix * (other - base)).astype(np.float32) * texture[..., None]
    np.copyto(photo, 255 * (albedo * diffuse[..., None] + specular[..., None]), where=inside[..., None])


def render_photo(rng: np.random.Generator, stones: list[Stone], labels: np.ndarray,
                 mask: np.ndarray) -> np.ndarray:
    """The BGR uint8 photo: belt and shadows, each stone shaded and textured, crevices, lens blur, sensor noise."""
    height, width = labels.shape
    side = min(height, width)
    step = max(1, round(side / 864))  # smooth fields are computed on a grid this many times coarser
    azimuth, elevation = rng.uniform(-np.pi, np.pi), rng.uniform(0.55, 0.95)
    light = np.float32([np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation),
                        np.sin(elevation)])  # unit vector towards the lamp
    small = (math.ceil(width / step), math.ceil(height / step))
    stones_small = cv2.resize((labels > 0).astype(np.float32), small, interpolation=cv2.INTER_AREA)
    photo = cv2.resize(render_belt(rng, stones_small, light), (width, height), interpolation=cv2.INTER_LINEAR)
    grain = smooth_noise(rng, (height, width), 4)  # fine mineral grain, shared by the belt and all stones
    mottle = smooth_noise(rng, (height, width), side * 0.004)
    blotches = smooth_noise(rng, (height, width), side * 0.02)
    photo *= (1 + 0.10 * grain)[..., None]
    for number, stone in enumerate(stones, start=1):
        x0, y0, x1, y1 = stone.bounds(height, width)
        inside = labels[y0:y1, x0:x1] == number
        if not inside.any():
            continue
        # Light on a coarse grid whose points land exactly where cv2.resize puts them, then upsampled.
        crop_w, crop_h = x1 - x0, y1 - y0
        xs = x0 + (np.arange(math.ceil(crop_w / step)) + 0.5) * crop_w / math.ceil(crop_w / step) - 0.5
        ys = y0 + (np.arange(math.ceil(crop_h / step)) + 0.5) * crop_h / math.ceil(crop_h / step) - 0.5
        shading = stone_shading(stone, xs, ys, light, rng.uniform(1.5, 3.0), rng.uniform(0, 0.5) ** 2)
        diffuse, specular = (cv2.resize(f, (crop_w, crop_h), interpolation=cv2.INTER_LINEAR) for f in shading)
        crop = np.s_[y0:y1, x0:x1]
        paint_stone(rng, photo[crop], inside, diffuse, specular, grain[crop], mottle[crop], blotches[crop])
    # Crevices: where two stones touch, the gap between them is in deep shade.
    crevice = cv2.GaussianBlur(((labels > 0) & (mask == 0)).astype(np.float32), (0, 0), side * 0.0008 + 0.3)
    photo *= (1 - 0.7 * np.clip(crevice * 2, 0, 1))[..., None]
    photo = cv2.GaussianBlur(photo, (0, 0), 0.7)  # a lens is never perfectly sharp
    photo += rng.standard_normal((height, width), dtype=np.float32)[..., None] * 3.5
    return np.clip(photo, 0, 255).astype(np.uint8)


def render_pair(seed: np.random.SeedSequence, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (photo, mask) pair drawn from its own random stream."""
    rng = np.random.default_rng(seed)
    stones = place_stones(rng, height, width)
    labels, mask = draw_labels(stones, height, width)
    return render_photo(rng, stones, labels, mask), mask


# ----------------------------------------------------------------------------- the writer
def sample_names(index: int, count: int) -> tuple[str, str]:
    """File names of photo `index` (from 0) in the prototype's layout: Image01.JPG + Image01_label.jpg."""
    stem = f"Image{index + 1:0{max(2, len(str(count)))}d}"
    return f"{stem}.JPG", f"{stem}_label.jpg"


def write_pair(folder: Path, index: int, count: int, seed: np.random.SeedSequence, height: int,
               width: int) -> int:
    """Render pair `index` and write both JPEGs into `folder` (runs in a worker process).

    The mask's JPEG is decoded again before it is written: thresholded at io.MASK_THRESHOLD it must give
    back the drawn mask exactly (0 differing pixels), or the sample is not written.
    """
    photo, mask = render_pair(seed, height, width)
    photo_name, mask_name = sample_names(index, count)
    for name, image, quality in ((photo_name, photo, PHOTO_QUALITY), (mask_name, mask, MASK_QUALITY)):
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {folder / name}")
        if name == mask_name:
            stored = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) > MASK_THRESHOLD
            differing = int(np.count_nonzero(stored != (mask > 0)))
            if differing:
                raise RuntimeError(f"{name}: the JPEG mask thresholded at {MASK_THRESHOLD} differs from the drawn "
                                   f"mask in {differing} pixels")
        (folder / name).write_bytes(encoded.tobytes())
    return index


def single_threaded_opencv() -> None:
    """Worker start-up: one photo per process already keeps every core busy."""
    cv2.setNumThreads(1)


def refuse_to_clobber(out: Path, overwrite: bool) -> None:
    """Raise unless `out` is absent or empty, or `overwrite` is set and it holds nothing but a sample."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    existing = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to replace the sample in it")
    strangers = [name for name in existing if not SAMPLE_FILE.fullmatch(name)]
    if strangers:
        raise FileExistsError(f"{out} holds files that are not part of a sample ({', '.join(strangers[:5])}); "
                              "refusing to replace it")


def write_sample(out: Path, count: int = 20, height: int = 3456, width: int = 4806, seed: int = 0,
                 workers: int | None = None, overwrite: bool = False) -> list[Path]:
    """Write `count` synthetic photos ImageNN.JPG + ImageNN_label.jpg into `out`; return the photo paths.

    The files go into a temporary sibling folder that is renamed to `out` only when all are written, so
    an interrupted run leaves no half-written `out`. A non-empty `out` is an error unless `overwrite`,
    and even then it is replaced only if it holds nothing but sample files. `workers` processes render
    in parallel (default: all cores) while cli.Progress counts the finished photos.
    """
    out = Path(out)
    if count < 1 or height < 16 or width < 16:
        raise ValueError(f"need count >= 1 and at least 16x16 pixels, got count={count}, {height}x{width}")
    target = out.resolve()
    for note in recover(target.parent, target.name):
        print(f"make_sample: {note}", file=sys.stderr)
    refuse_to_clobber(out, overwrite)

    seeds = np.random.SeedSequence(seed).spawn(count)
    workers = min(count, workers or cli.cores())
    with staged_folder(target, overwrite=True) as staging:  # refuse_to_clobber has checked what it replaces
        # Spawned, not forked: the caller may already run TensorFlow threads, which a fork would copy mid-flight.
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=single_threaded_opencv)
        try:
            progress = cli.Progress(count, "photo", "make_sample")
            pending = {pool.submit(write_pair, staging, index, count, seeds[index], height, width)
                       for index in range(count)}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # re-raises a worker's error here
                progress.add(len(done))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return [out / sample_names(index, count)[0] for index in range(count)]


# ----------------------------------------------------------------------------- the command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_sample",
        description="Write synthetic, photo-like stone photos (ImageNN.JPG, JPEG quality 90) with exact "
                    "black/white masks (ImageNN_label.jpg: 255 = stone, 0 = belt and the gaps between touching "
                    "stones) in the prototype's layout. The same seed gives byte-identical files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="folder to create")
    parser.add_argument("--count", type=int, default=20, help="number of photo/mask pairs")
    parser.add_argument("--height", type=int, default=3456, help="photo height in pixels")
    parser.add_argument("--width", type=int, default=4806, help="photo width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed; image NN uses the stream (seed, NN)")
    parser.add_argument("--workers", type=int, default=cli.cores(),
                        help="worker processes rendering in parallel; all cores by default")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing sample in --out")
    args = parser.parse_args(argv)
    if args.count < 1 or args.workers < 1:
        parser.error("--count and --workers must be at least 1")
    if args.height < 16 or args.width < 16:
        parser.error("--height and --width must be at least 16 pixels")
    return args


@cli.command("make_sample")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos = write_sample(args.out, args.count, args.height, args.width, args.seed, args.workers, args.overwrite)
    print(f"wrote {len(photos)} photos and masks to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
