"""Draw the README's two pictures from a photo's TRUE mask: its stones outlined, and their size curve.

    python -m tools.doc_figures [--photo ../shared/data/stones20/Image03.JPG] [--out docs/images] [--width 560]

The pictures show what `stoneseg.predict` writes (NAME_overlay.jpg, NAME_sizes.png) without a trained
model: the stones are the true mask's 8-connected regions (stones20's masks separate touching stones),
small ones dropped as predict drops them (stoneseg.stones.stone_regions), drawn by the same
stoneseg.stones.draw_stones and size_curve_png that predict uses. The overlay is drawn at full size, then shrunk to `--width` pixels and saved as a JPEG, so the
repository holds a small picture, never the photo itself.
"""

import argparse
import sys
from pathlib import Path

import cv2

from stoneseg import cli
from stoneseg.files import write_atomically
from stoneseg.io import ImageError, check_same_size, encode_jpeg, read_mask, read_photo_full
from stoneseg.stones import draw_stones, measure_stones, size_curve_png, size_distribution, stone_regions

PROG = "doc_figures"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--photo", type=Path, default=Path("../shared/data/stones20/Image03.JPG"),
                        help="a photo in the prototype's layout, with its mask NAME_label.jpg beside it")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="folder for the two pictures")
    parser.add_argument("--width", type=int, default=560, help="width of the overlay picture in pixels")
    return parser.parse_args(argv)


@cli.command(PROG)
def main(argv=None) -> int:
    args = parse_args(argv)
    mask_path = args.photo.with_name(f"{args.photo.stem}_label.jpg")
    try:
        photo = read_photo_full(args.photo)
        mask, mask_size = read_mask(mask_path, photo.shape[:2])
        check_same_size(str(args.photo), photo.shape[:2], str(mask_path), mask_size)
    except ImageError as error:
        raise cli.InputError(str(error)) from error
    labels = stone_regions(mask)
    overlay = draw_stones(photo, labels)
    height = round(overlay.shape[0] * args.width / overlay.shape[1])
    small = cv2.resize(overlay, (args.width, height), interpolation=cv2.INTER_AREA)
    name = args.photo.stem
    distribution = size_distribution(measure_stones(labels))
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / f"{name}_true_overlay.jpg", encode_jpeg(small, quality=75))
    write_atomically(args.out / f"{name}_true_sizes.png", size_curve_png(distribution, f"{name}, true mask"))
    print(f"{PROG}: {labels.max()} true stones of {args.photo}; wrote {args.out}/{name}_true_overlay.jpg "
          f"and {name}_true_sizes.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
