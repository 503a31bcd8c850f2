"""Writes the TIFF fixtures of data/tests/tiff.rs with Pillow (an independent TIFF writer):

    /var/tmp/anvil-venv/bin/python scripts/tiff_fixture.py data/tests/fixtures/tiff

- stack_gray_lzw.tif: 3 pages, 8-bit grayscale 40x48, LZW (a multi-page stack, sleap-io's
  TiffVideo "multi_page" format);
- stack_rgb_deflate.tif: 2 pages, 8-bit RGB 24x32, Deflate;
- frame_rgba.tif: 1 page, 8-bit RGBA 16x20, uncompressed (an image of an image sequence);
- gray16.tif: 1 page, 16-bit grayscale (refused: anvil reads 8-bit frames);
- every page of the first three also as page_<file>_<i>.png, the pixels the TIFF reader must
  return (alpha dropped).
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)


def pages(n, h, w, c):
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        base = (xx * 5 + yy * 3 + i * 40) % 256
        noise = rng.integers(0, 30, size=(h, w, c))
        frames.append(((base[..., None] + noise + np.arange(c) * 70) % 256).astype(np.uint8))
    return frames


def save(name, frames, mode, compression):
    imgs = [Image.fromarray(f[..., 0] if mode == "L" else f, mode) for f in frames]
    imgs[0].save(
        out / name, save_all=True, append_images=imgs[1:], compression=compression
    )
    for i, (f, img) in enumerate(zip(frames, imgs)):
        keep = img.convert("RGB") if mode == "RGBA" else img
        keep.save(out / f"page_{Path(name).stem}_{i}.png")


save("stack_gray_lzw.tif", pages(3, 40, 48, 1), "L", "tiff_lzw")
save("stack_rgb_deflate.tif", pages(2, 24, 32, 3), "RGB", "tiff_adobe_deflate")
save("frame_rgba.tif", pages(1, 16, 20, 4), "RGBA", None)
Image.fromarray((np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)).save(
    out / "gray16.tif"
)
print("wrote", sorted(p.name for p in out.iterdir()))
