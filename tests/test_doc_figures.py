"""tools.doc_figures: the README's overlay and size curve, drawn from a photo's true mask."""

import cv2
import numpy as np

from stoneseg.io import read_mask
from stoneseg.stones import stone_regions
from tools.doc_figures import main


def test_draws_the_true_stones_small(tiny_photos, tmp_path, capsys):
    photo = tiny_photos / "Image01.JPG"
    assert main(["--photo", str(photo), "--out", str(tmp_path), "--width", "64"]) == 0
    overlay = cv2.imread(str(tmp_path / "Image01_true_overlay.jpg"))
    assert overlay.shape == (48, 64, 3)  # 96 x 128 shrunk to 64 wide, aspect kept
    curve = cv2.imread(str(tmp_path / "Image01_true_sizes.png"))
    assert curve is not None and curve.shape[1] > 300
    mask, _ = read_mask(tiny_photos / "Image01_label.jpg", (96, 128))
    stones = int(stone_regions(mask).max())
    assert stones > 0 and f"{stones} true stones" in capsys.readouterr().out


def test_a_photo_without_its_mask_is_one_error_line(tmp_path, capsys):
    photo = tmp_path / "Lonely.JPG"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    assert main(["--photo", str(photo), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("doc_figures: error:") and "Lonely_label.jpg" in error
    assert not (tmp_path / "out").exists()
