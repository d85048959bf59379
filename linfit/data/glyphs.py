"""Glyph images rendered from the fonts that ship with matplotlib: an Omniglot-like family of scripts.

Each character is a class; the variation within a class comes from the different font designs
(DejaVu Sans/Serif/Mono and their bold/oblique cuts, STIX General, Computer Modern) plus a seeded
random affine jitter (rotation, shear, scale, shift) and stroke thickening.

Rendering of one sample (all geometry at 4x the output resolution, then box-filtered to 28x28):

1. draw the character at 96 px with Pillow/FreeType;
2. crop to a box: the glyph's own bounding box (``fit="bbox"``, MNIST-like size normalisation) or the
   union of the bounding boxes of every character of the domain in that font (``fit="cell"``, which
   keeps relative position and size: needed for braille dots, box drawing, small vs large shapes);
3. scale the box so its longer side is 20/28 of the image, centre it;
4. thicken strokes (max filter) and apply the affine jitter; downsample to ``[28, 28]`` uint8,
   white glyph on black like MNIST.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from linfit.errors import DatasetError

OUT = 28  # output side in pixels
SCALE = 4  # supersampling factor
BOX = 20  # side of the fitted glyph box in output pixels (as MNIST's 20x20 digit box)
FONT_PX = 96


def font_dir() -> str:
    """Directory of the TrueType fonts bundled with matplotlib."""
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


DEJAVU = tuple(
    f"DejaVu{family}{cut}.ttf"
    for family, cuts in (("Sans", ("", "-Bold", "-Oblique", "-BoldOblique")),
                         ("Serif", ("", "-Bold", "-Italic", "-BoldItalic")),
                         ("SansMono", ("", "-Bold", "-Oblique", "-BoldOblique")))
    for cut in cuts
)
STIX = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")
# Computer Modern fonts whose ASCII code points hold ordinary letters and digits
# (cmsy10/cmex10 reuse those code points for symbols and are left out).
COMPUTER_MODERN = ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf")
ALL_FONTS = DEJAVU + STIX + COMPUTER_MODERN


@functools.cache
def _cmap(font_file: str) -> frozenset:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(os.path.join(font_dir(), font_file)).getBestCmap())


@functools.cache
def _font(font_file: str):
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(font_dir(), font_file), FONT_PX)


def fonts_for(char: str, fonts=ALL_FONTS) -> tuple[str, ...]:
    """The font files among ``fonts`` whose character map contains ``char`` and draw it non-empty."""
    return tuple(f for f in fonts if ord(char) in _cmap(f) and _draw(char, f).getbbox() is not None)


@functools.lru_cache(maxsize=256)  # ~80 kB per entry
def _draw(char: str, font_file: str):
    """The character drawn white on black, centred on a 3*FONT_PX canvas (Pillow "L" image)."""
    from PIL import Image, ImageDraw

    side = 3 * FONT_PX
    img = Image.new("L", (side, side), 0)
    ImageDraw.Draw(img).text((side // 2, side // 2), char, fill=255, font=_font(font_file), anchor="mm")
    return img


def _union_box(boxes):
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def render(char: str, font_file: str, rng: np.random.Generator, *, crop_box=None, jitter: bool = True) -> np.ndarray:
    """Render one sample of ``char`` in ``font_file``.

    Args:
      crop_box: ``(left, top, right, bottom)`` on the drawing canvas; default: the glyph's bbox.
      jitter: apply the random affine jitter and thickening (drawn from ``rng``).

    Returns:
      ``[28, 28]`` uint8, white glyph on black.
    """
    from PIL import Image, ImageFilter

    img = _draw(char, font_file)
    box = crop_box or img.getbbox()
    if box is None:
        raise DatasetError(f"font {font_file} draws U+{ord(char):04X} as an empty glyph")
    glyph = img.crop(box)
    w, h = glyph.size
    f = BOX * SCALE / max(w, h)
    glyph = glyph.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)
    side = OUT * SCALE
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
    if jitter:
        thick = rng.choice([1, 3, 5], p=[0.5, 0.3, 0.2])
        if thick > 1:
            canvas = canvas.filter(ImageFilter.MaxFilter(int(thick)))
        canvas = canvas.transform(canvas.size, Image.AFFINE, _affine(rng, side), resample=Image.BILINEAR)
    return np.asarray(canvas.resize((OUT, OUT), Image.BOX), np.uint8)


def _affine(rng: np.random.Generator, side: int) -> tuple[float, ...]:
    """Inverse affine map (output -> input pixel) of a random rotation/shear/scale/shift about the centre."""
    angle = np.deg2rad(rng.uniform(-12.0, 12.0))
    shear = rng.uniform(-0.15, 0.15)
    scale = rng.uniform(0.85, 1.1, size=2)
    shift = rng.uniform(-1.5, 1.5, size=2) * SCALE
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    inv = np.linalg.inv(forward)
    c = np.array([side / 2.0, side / 2.0])
    offset = c - inv @ (c + shift)
    return (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])


def render_classes(
    chars, per_class: int, *, seed: int, fonts=ALL_FONTS, fit: str = "bbox", min_fonts: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``per_class`` jittered samples of every character, cycling through the fonts that have it.

    Args:
      chars: the classes, one character each (label ``i`` is ``chars[i]``).
      seed: seed of the jitter; the output is a pure function of the arguments (and the font files).
      fit: ``"bbox"`` or ``"cell"`` (see the module docstring).
      min_fonts: raise :class:`DatasetError` if a character is drawn by fewer fonts.

    Returns:
      ``([C * per_class, 28, 28] uint8, [C * per_class] int32)``, grouped by class.
    """
    if fit not in ("bbox", "cell"):
        raise DatasetError(f"fit must be 'bbox' or 'cell'; got {fit!r}")
    chars = list(chars)
    pools = {c: fonts_for(c, fonts) for c in chars}
    thin = {c: len(p) for c, p in pools.items() if len(p) < min_fonts}
    if thin:
        raise DatasetError(f"characters drawn by fewer than {min_fonts} fonts: {thin}")
    cells = {}
    if fit == "cell":
        for font in {f for p in pools.values() for f in p}:
            cells[font] = _union_box([_draw(c, font).getbbox() for c in chars if font in pools[c]])
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, char in enumerate(chars):
        pool = pools[char]
        start = rng.integers(len(pool))
        for i in range(per_class):
            font = pool[(start + i) % len(pool)]
            images.append(render(char, font, rng, crop_box=cells.get(font)))
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)
