"""Redraw logo.png and favicon.png: a 3x3 grid of image patches with the most salient one masked out.

Run from the repository root: ``.venv/bin/python assets/draw.py``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
INDIGO = (79, 70, 229)
INDIGO_LIGHT = (165, 160, 245)
INK = (31, 35, 51)
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")  # Debian's fonts-dejavu-core
SCALE = 4  # draw large, then downsample, for smooth edges


def draw_mark(size: int) -> Image.Image:
    big = size * SCALE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    gap = big // 14
    cell = (big - 2 * gap) // 3
    radius = cell // 5
    for row in range(3):
        for col in range(3):
            x, y = col * (cell + gap), row * (cell + gap)
            box = (x, y, x + cell, y + cell)
            if (row, col) == (0, 0):
                # The masked patch: blacked out, the way MaskTune hides the most salient region.
                draw.rounded_rectangle(box, radius, fill=INK)
            else:
                draw.rounded_rectangle(box, radius, fill=INDIGO if (row + col) % 2 else INDIGO_LIGHT)
    return image.resize((size, size), Image.LANCZOS)


def draw_logo(height: int) -> Image.Image:
    font = ImageFont.truetype(str(FONT), int(height * 0.62))
    text = "MaskTune Studio"
    left, top, right, bottom = font.getbbox(text)
    pad = height // 3
    image = Image.new("RGBA", (height + pad + right - left + 4, height), (0, 0, 0, 0))
    image.alpha_composite(draw_mark(height))
    draw = ImageDraw.Draw(image)
    draw.text((height + pad - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=INK)
    return image


def main() -> None:
    draw_mark(64).save(HERE / "favicon.png")
    draw_logo(96).save(HERE / "logo.png")
    draw_mark(96).save(HERE / "mark.png")


if __name__ == "__main__":
    main()
