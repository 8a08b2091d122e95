"""Pictures write any class name: the confusion matrix draws non-ASCII letters and spaces with real glyphs
(vpt ships a DejaVu Sans subset), on a machine without fonts too, and says which characters it cannot draw."""
import logging

import numpy as np
import pytest
from PIL import Image, ImageFont

from vpt import fonts
from vpt.metrics import draw_confusion_matrix

NAMES = ["navío", "golden retriever", "Жук", "straße", "Ελιά", "cá voi"]
TOFU = "\U0010ffff"  # in no font: what a missing glyph looks like


def _png(tmp_path, names, name="cm.png"):
    path = tmp_path / name
    draw_confusion_matrix([[2, 1], [0, 3]], names, str(path))
    return np.asarray(Image.open(path).convert("L"))


def test_confusion_matrix_draws_accented_letters_not_missing_glyph_boxes(tmp_path):
    accented = _png(tmp_path, ["navío", "golden retriever"], "a.png")
    boxed = _png(tmp_path, ["nav" + TOFU + "o", "golden retriever"], "b.png")
    plain = _png(tmp_path, ["navio", "golden retriever"], "c.png")
    # 'í' is neither the missing-glyph box nor a plain 'i'
    assert accented.shape == plain.shape and not np.array_equal(accented, boxed)
    assert not np.array_equal(accented, plain)


def test_confusion_matrix_keeps_spaces_and_whole_names(tmp_path):
    spaced = _png(tmp_path, ["golden retriever", "cat"], "a.png")
    joined = _png(tmp_path, ["goldenretriever", "cat"], "b.png")
    assert spaced.shape[0] > joined.shape[0]  # the column labels are as long as the names drawn, space included


def test_bundled_font_covers_latin_greek_cyrillic():
    font = ImageFont.truetype(fonts.BUNDLED, 12)
    for ch in "".join(NAMES).replace(" ", ""):
        assert fonts.has_glyph(font, ch), ch
    assert not fonts.has_glyph(font, "中") and not fonts.has_glyph(font, TOFU)


def test_bundled_font_cmap_covers_the_names():
    """The same, read from the font's character map (independent of the pixel comparison above)."""
    ttlib = pytest.importorskip("fontTools.ttLib")
    cmap = ttlib.TTFont(fonts.BUNDLED).getBestCmap()
    assert all(ord(ch) in cmap for ch in "".join(NAMES))


@pytest.fixture
def bare_machine(monkeypatch):
    """No system fonts, no matplotlib, no VPT_FONT: only what pip installs."""
    monkeypatch.setattr(fonts, "FONT_DIRS", ())
    monkeypatch.setattr(fonts, "_matplotlib_dejavu", lambda: None)
    monkeypatch.delenv("VPT_FONT", raising=False)
    fonts.system_fonts.cache_clear()
    yield
    fonts.system_fonts.cache_clear()


def test_bare_machine_draws_the_names_and_names_what_it_cannot(bare_machine, tmp_path, caplog):
    assert fonts.missing_characters(NAMES) == []
    with caplog.at_level(logging.WARNING, logger="vpt.fonts"):
        draw_confusion_matrix(np.eye(len(NAMES), dtype=int).tolist(), NAMES, str(tmp_path / "ok.png"))
    assert "no font here has" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="vpt.fonts"):
        draw_confusion_matrix([[1, 0], [0, 1]], ["中文", "cat"], str(tmp_path / "cjk.png"))
    assert "no font here has the characters '中文'" in caplog.text and "VPT_FONT" in caplog.text
    assert Image.open(tmp_path / "cjk.png").size[0] > 0  # drawn all the same, with boxes


def test_without_the_bundled_font_pictures_are_still_drawn(bare_machine, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(fonts, "BUNDLED", str(tmp_path / "gone.ttf"))
    monkeypatch.setattr(fonts, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="vpt.fonts"):
        draw_confusion_matrix([[1, 0], [0, 1]], ["navío", "cat"], str(tmp_path / "cm.png"))
    assert "bundled font" in caplog.text and "reinstall vpt" in caplog.text
    assert "'í'" in caplog.text  # PIL's own font is ASCII only: the warning says so
    assert (tmp_path / "cm.png").exists()


def test_vpt_font_comes_first_and_a_bad_one_is_named(bare_machine, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("VPT_FONT", fonts.BUNDLED)
    assert next(fonts.font_files()) == fonts.BUNDLED
    monkeypatch.setattr(fonts, "_warned", set())
    monkeypatch.setenv("VPT_FONT", str(tmp_path / "nope.ttf"))
    with caplog.at_level(logging.WARNING, logger="vpt.fonts"):
        assert next(fonts.font_files()) == fonts.BUNDLED
    assert "nope.ttf" in caplog.text and "is not a file" in caplog.text


def test_decomposed_names_are_composed():
    """macOS file names store 'í' as 'i' + U+0301: drawn as one letter."""
    r = fonts.TextRenderer(12)
    assert [run for run, _ in r.runs("navi\u0301o")] == ["navío"]
