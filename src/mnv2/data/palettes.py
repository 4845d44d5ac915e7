"""Colours for drawn results (numpy-free, torch-free): the VOC colour map for segmentation classes and the palette
of detection boxes."""

from __future__ import annotations

# Detection boxes, one colour per class in turn (Sasha Trubetskoy's "20 distinct colours", first ten).
BOX_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))  # fmt: skip


def voc_colormap(n: int = 256) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC devkit's colour map (``labelcolormap.m``): class ``i``'s colour from the bits of ``i``
    interleaved into R, G, B from the most significant bit down. Index 255 is (224, 224, 192), VOC's "void"."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)
