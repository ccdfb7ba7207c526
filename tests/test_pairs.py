"""Pairing photos with masks in both folder layouts; pairing reads names only, never pixels."""

from pathlib import Path

import pytest

from stoneseg import pairs


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_flat_layout_pairs_any_extension_case_and_lists_strays(tmp_path):
    touch(tmp_path / "a.JPG", tmp_path / "a_label.jpg")
    touch(tmp_path / "b.jpeg", tmp_path / "b_label.PNG")
    touch(tmp_path / "c.png", tmp_path / "c_LABEL.JPEG")
    (tmp_path / "notes.txt").write_text("not a photo")
    touch(tmp_path / "lonely_label.jpg")
    (tmp_path / "old").mkdir()
    inventory = pairs.find_pairs(tmp_path)
    assert inventory.pairs == [pairs.Pair("a.JPG", "a_label.jpg"), pairs.Pair("b.jpeg", "b_label.PNG"),
                               pairs.Pair("c.png", "c_LABEL.JPEG")]
    assert inventory.strays == ["lonely_label.jpg", "notes.txt", "old/"]
    assert inventory.problems == []


def test_folder_layout_pairs_by_stem_with_or_without_label(tmp_path):
    touch(tmp_path / "images" / "x.jpg", tmp_path / "masks" / "x.png")
    touch(tmp_path / "images" / "y.JPG", tmp_path / "masks" / "y_label.jpg")
    touch(tmp_path / "images" / "z.jpg", tmp_path / "masks" / "z.jpg")
    touch(tmp_path / "masks" / "z_label.jpg")
    touch(tmp_path / "images" / "w.jpg")
    touch(tmp_path / "masks" / "orphan.png")
    (tmp_path / "README.md").write_text("notes")
    touch(tmp_path / "images" / "Thumbs.db")
    inventory = pairs.find_pairs(tmp_path)
    assert inventory.pairs == [pairs.Pair("images/x.jpg", "masks/x.png"),
                               pairs.Pair("images/y.JPG", "masks/y_label.jpg")]
    assert [str(problem) for problem in inventory.problems] == [
        "images/w.jpg: no mask: expected a mask masks/w.<ext> or masks/w_label.<ext>",
        "images/z.jpg: more than one mask: masks/z.jpg, masks/z_label.jpg",
    ]
    assert inventory.strays == ["README.md", "images/Thumbs.db", "masks/orphan.png"]


def test_two_photos_with_one_name_are_a_problem(tmp_path):
    touch(tmp_path / "a.jpg", tmp_path / "a_label.jpg")
    touch(tmp_path / "a.png")
    problems = pairs.find_pairs(tmp_path).problems
    assert [problem.file for problem in problems] == ["a.jpg", "a.png"]
    assert "more than one photo is called a" in problems[0].problem


def test_missing_or_non_folder_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pairs.find_pairs(tmp_path / "nowhere")
    touch(tmp_path / "file.jpg")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        pairs.find_pairs(tmp_path / "file.jpg")
