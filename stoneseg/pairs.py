"""Which files in an input folder are photos, and which mask goes with each: the folder layouts
`tools.build_records` and `stoneseg.evaluate --data` both read."""

import dataclasses
from pathlib import Path
from typing import NamedTuple

from stoneseg.io import MASK_SUFFIXES

MASK_TAG = "_label"


class Problem(NamedTuple):
    """Why a file cannot be used."""
    file: str  # path relative to the input folder
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


@dataclasses.dataclass(frozen=True)
class Pair:
    photo: str  # paths relative to the input folder, "/"-separated
    mask: str


@dataclasses.dataclass(frozen=True)
class Inventory:
    """What an input folder holds: usable pairs, photos that cannot be paired, and ignored files."""
    pairs: list[Pair]
    problems: list[Problem]
    strays: list[str]



def find_pairs(data: Path) -> Inventory:
    """Pair photos with masks in `data`: the `images/` + `masks/` layout if `images/` exists, else flat.

    Flat (the prototype's): X.<ext> with mask X_label.<ext>. Folders: images/X.<ext> with masks/X.<ext>
    or masks/X_label.<ext> (Cellpose's, StarDist's and ImageGrains' data sets, whose masks are 16-bit
    instance labels). <ext> is .jpg, .jpeg, .png, .tif or .tiff in any case; names are case-sensitive otherwise.
    Anything else is a stray: ignored and listed.
    """
    if not data.exists():
        raise FileNotFoundError(f"input folder {data} does not exist")
    if not data.is_dir():
        raise NotADirectoryError(f"input {data} is not a folder")
    if (data / "images").is_dir():
        strays = [_relative(path, data) for path in sorted(data.iterdir()) if path.name not in ("images", "masks")]
        photos, photo_strays = _images_by_stem(data / "images", data, strip_tag=False)
        masks, mask_strays = _images_by_stem(data / "masks", data, strip_tag=True)
        expected = "a mask masks/{stem}.<ext> or masks/{stem}_label.<ext>"
        if not (data / "masks").is_dir():
            expected = "a masks/ folder beside images/"
        strays += photo_strays + mask_strays
    else:
        images, strays = _images_by_stem(data, data, strip_tag=False)
        photos, masks = {}, {}
        for stem, paths in images.items():
            if _is_mask(stem):
                masks.setdefault(stem[:-len(MASK_TAG)], []).extend(paths)
            else:
                photos[stem] = paths
        expected = "a mask {stem}_label.jpg, .jpeg, .png, .tif or .tiff"
    pairs, problems = [], []
    for stem, stem_photos in photos.items():
        stem_masks = masks.pop(stem, [])
        if len(stem_photos) > 1:
            problems += [Problem(photo, f"more than one photo is called {stem}: {', '.join(stem_photos)}")
                         for photo in stem_photos]
        elif not stem_masks:
            problems.append(Problem(stem_photos[0], "no mask: expected " + expected.format(stem=stem)))
        elif len(stem_masks) > 1:
            problems.append(Problem(stem_photos[0], f"more than one mask: {', '.join(stem_masks)}"))
        else:
            pairs.append(Pair(stem_photos[0], stem_masks[0]))
    strays += [mask for stem_masks in masks.values() for mask in stem_masks]  # masks without a photo
    return Inventory(sorted(pairs, key=lambda pair: pair.photo), sorted(problems), sorted(strays))


def _images_by_stem(folder: Path, data: Path, strip_tag: bool) -> tuple[dict[str, list[str]], list[str]]:
    """Image files in `folder` grouped by stem (without a trailing _label if `strip_tag`), and the rest."""
    images, rest = {}, []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and path.suffix.lower() in MASK_SUFFIXES:
            stem = path.stem[:-len(MASK_TAG)] if strip_tag and _is_mask(path.stem) else path.stem
            images.setdefault(stem, []).append(_relative(path, data))
        else:
            rest.append(_relative(path, data))
    return images, rest


def _is_mask(stem: str) -> bool:
    return stem.lower().endswith(MASK_TAG)


def _relative(path: Path, data: Path) -> str:
    return path.relative_to(data).as_posix() + ("/" if path.is_dir() else "")
