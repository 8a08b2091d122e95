"""Text in the pictures vpt draws with PIL (the confusion matrix): any class name, on any machine.

PIL's own font is ASCII only: ``navío`` came out with a missing-glyph box. vpt ships a subset of DejaVu Sans
(``DejaVuSans-vpt.ttf``, 150 KB: Latin with its extensions and Vietnamese, IPA, Greek, Cyrillic, combining
marks, punctuation, currency, arrows; licence in ``LICENSE_DEJAVU``, how it was cut in ``README.md``) and draws
each character with the first font of this chain that has it:

1. ``$VPT_FONT``: a .ttf / .otf / .ttc file of your choice (e.g. a CJK font);
2. the bundled DejaVu Sans subset;
3. DejaVu Sans in full (matplotlib's copy, or the system's), then wide-coverage system fonts (Noto, Noto CJK,
   Droid Sans Fallback, WenQuanYi, Unifont, Arial Unicode, ...), looked up only when 1-2 lack a character;
4. PIL's default font.

A character no font has is drawn as a box, and one warning per picture names it and the fix (``VPT_FONT``).
Text is NFC-normalised first (macOS file names store ``í`` as ``i`` + a combining accent).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import unicodedata
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

_logger = logging.getLogger(__name__)

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "DejaVuSans-vpt.ttf")
# wide-coverage fonts worth trying for characters the bundled subset lacks, best first (file names)
SYSTEM_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "NotoSansCJK-Regular.ttc", "NotoSansCJKsc-Regular.otf",
                "NotoSansCJKjp-Regular.otf", "NotoSansArabic-Regular.ttf", "NotoSansHebrew-Regular.ttf",
                "NotoSansDevanagari-Regular.ttf", "NotoSansThai-Regular.ttf", "DroidSansFallbackFull.ttf",
                "DroidSansFallback.ttf", "wqy-zenhei.ttc", "wqy-microhei.ttc", "unifont.otf", "unifont.ttf",
                "Arial Unicode.ttf", "arialuni.ttf", "msyh.ttc", "msgothic.ttc", "malgun.ttf", "segoeui.ttf",
                "Arial.ttf", "arial.ttf")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts", "/Library/Fonts",
             "/System/Library/Fonts", "~/Library/Fonts", os.path.join(os.environ.get("WINDIR", "C:\\Windows"), "Fonts"))
_NOT_A_CHARACTER = "\U0010ffff"  # in no font's character map: renders as the font's missing-glyph box


def _matplotlib_dejavu() -> Optional[str]:
    """matplotlib's DejaVuSans.ttf, found without importing matplotlib (slow)."""
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
    return path if os.path.isfile(path) else None


@functools.lru_cache(maxsize=1)
def system_fonts() -> Tuple[str, ...]:
    """Paths of the :data:`SYSTEM_FONTS` found on this machine, in that order (one walk of the font folders)."""
    found: Dict[str, str] = {}
    wanted = set(SYSTEM_FONTS)
    for top in FONT_DIRS:
        top = os.path.expanduser(top)
        if not os.path.isdir(top):
            continue
        for dirpath, _, files in os.walk(top):
            for f in files:
                if f in wanted and f not in found:
                    found[f] = os.path.join(dirpath, f)
    return tuple(found[n] for n in SYSTEM_FONTS if n in found)


def font_files() -> Iterator[str]:
    """The font chain (module docstring), lazily: the system is searched only if the first fonts fall short."""
    seen = set()
    user = os.environ.get("VPT_FONT")
    if user:
        if os.path.isfile(user):
            seen.add(user)
            yield user
        else:
            _warn_once(("VPT_FONT", user), "VPT_FONT=%r is not a file; using vpt's fonts (set it to a .ttf / .otf / "
                                           ".ttc file)", user)
    if os.path.isfile(BUNDLED):
        yield BUNDLED
    else:
        _warn_once(("bundled",), "vpt's bundled font %s is missing (a broken install?); reinstall vpt. Using other "
                                 "fonts", BUNDLED)
    for path in (_matplotlib_dejavu(), *system_fonts()):
        if path and path not in seen:
            seen.add(path)
            yield path


@functools.lru_cache(maxsize=None)
def _load(path: str, size: int):
    from PIL import ImageFont
    try:
        return ImageFont.truetype(path, size)
    except (OSError, ValueError) as e:  # unreadable font file: skip it
        _warn_once(("load", path), "cannot read font %s (%s); skipping it", path, e)
        return None


@functools.lru_cache(maxsize=None)
def _default(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable (ASCII) font
    except TypeError:
        return ImageFont.load_default()


def _mask(font, text: str) -> Tuple[Tuple[int, int], bytes]:
    m = font.getmask(text)
    return m.size, bytes(m)


@functools.lru_cache(maxsize=None)
def _tofu(font) -> Tuple[Tuple[int, int], bytes]:
    return _mask(font, _NOT_A_CHARACTER)


def has_glyph(font, ch: str) -> bool:
    """Whether ``font`` draws ``ch`` with a glyph of its own rather than its missing-glyph box."""
    if unicodedata.category(ch) in ("Zs", "Cc", "Cf"):  # spaces and controls: nothing to draw, any font will do
        return True
    return _mask(font, ch) != _tofu(font)


class TextRenderer:
    """Draws text at one pixel size, each character in the first font of the chain that has it."""

    def __init__(self, size: int = 12):
        self.size = size
        self._chain: List = []  # fonts loaded so far, in chain order
        self._files = font_files()
        self._pick: Dict[str, object] = {}
        self.missing: List[str] = []  # characters no font has (drawn with the first font's box)

    def _next_font(self):
        for path in self._files:
            font = _load(path, self.size)
            if font is not None:
                self._chain.append(font)
                return font
        return None

    def font_for(self, ch: str):
        if ch in self._pick:
            return self._pick[ch]
        for font in self._chain:
            if has_glyph(font, ch):
                self._pick[ch] = font
                return font
        while True:
            font = self._next_font()
            if font is None:
                break
            if has_glyph(font, ch):
                self._pick[ch] = font
                return font
        if not self._chain:  # no font file at all: PIL's own font, ASCII only
            fallback = _default(self.size)
            self._pick[ch] = fallback
            if not has_glyph(fallback, ch):
                self.missing.append(ch)
            return fallback
        self.missing.append(ch)
        self._pick[ch] = self._chain[0]
        return self._chain[0]

    def runs(self, text: str) -> List[Tuple[str, object]]:
        """``text`` (NFC) split into (substring, font) runs."""
        out: List[Tuple[str, object]] = []
        for ch in unicodedata.normalize("NFC", str(text)):
            font = self.font_for(ch)
            if out and out[-1][1] is font:
                out[-1] = (out[-1][0] + ch, font)
            else:
                out.append((ch, font))
        return out

    def length(self, text: str) -> float:
        """Width of ``text`` in pixels."""
        return sum(font.getlength(run) for run, font in self.runs(text))

    def fit(self, text: str, width: float) -> str:
        """``text``, shortened with '…' to at most ``width`` pixels."""
        text = unicodedata.normalize("NFC", str(text))
        if self.length(text) <= width:
            return text
        while text and self.length(text + "…") > width:
            text = text[:-1]
        return text.rstrip() + "…"

    def draw(self, draw, xy: Tuple[float, float], text: str, fill="black") -> None:
        """Draw ``text`` with its top-left at ``xy`` (all runs on one baseline)."""
        from PIL import ImageFont
        x, y = xy
        baseline = y + round(self.size * 0.95)
        for run, font in self.runs(text):
            if isinstance(font, ImageFont.FreeTypeFont):
                draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
            else:  # PIL's bitmap font (Pillow without FreeType): no anchors
                draw.text((x, y), run, fill=fill, font=font)
            x += font.getlength(run)

    def warn_missing(self, where: str) -> None:
        """One warning naming the characters no font could draw in ``where`` (a file name)."""
        if self.missing:
            chars = "".join(sorted(set(self.missing)))
            _logger.warning("%s: no font here has the characters %r (drawn as boxes); set VPT_FONT to a font file "
                            "that has them, e.g. Noto Sans CJK for Chinese / Japanese / Korean (Debian: apt install "
                            "fonts-noto-cjk)", where, chars)


def missing_characters(texts: Sequence[str], size: int = 12) -> List[str]:
    """The characters of ``texts`` that no font of the chain can draw (sorted); [] when all can be drawn."""
    r = TextRenderer(size)
    for t in texts:
        r.runs(t)
    return sorted(set(r.missing))


_warned: set = set()


def _warn_once(key, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        _logger.warning(msg, *args)


__all__ = ["BUNDLED", "TextRenderer", "font_files", "has_glyph", "missing_characters", "system_fonts"]
