"""attnviz.inputs.imagefile: every file format and pixel mode to RGB, EXIF orientation, and bad files."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from attnviz.errors import InputError
from attnviz.inputs.imagefile import load_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(w=40, h=24):
    """An RGB image whose top-left quadrant is red, top-right green, bottom half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = RED
    a[: h // 2, w // 2 :] = GREEN
    a[h // 2 :] = BLUE
    return Image.fromarray(a, "RGB")


def px(image, x, y):
    return tuple(int(v) for v in image.getpixel((x, y)))


def close(a, b, tol=12):
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


# ---------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("fmt,suffix,lossy", [
    ("JPEG", "jpg", True), ("PNG", "png", False), ("WEBP", "webp", False), ("BMP", "bmp", False),
    ("GIF", "gif", False), ("TIFF", "tif", False),
])
def test_formats_load_as_rgb(tmp_path, fmt, suffix, lossy):
    path = tmp_path / f"photo.{suffix}"
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    quadrants().save(path, fmt, **kwargs)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 24)
    check = close if lossy else (lambda a, b: a == b)
    assert check(px(img, 2, 2), RED) and check(px(img, 37, 2), GREEN) and check(px(img, 2, 21), BLUE)


def test_gif_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE, GREEN)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    img = load_image(path)
    assert img.mode == "RGB" and px(img, 8, 8) == RED


def test_pil_image_input_is_converted_too():
    img = load_image(Image.new("L", (5, 4), 77))
    assert img.mode == "RGB" and px(img, 0, 0) == (77, 77, 77)


# ---------------------------------------------------------------------------
# modes


def test_grayscale_and_bilevel():
    assert px(load_image(Image.new("L", (3, 3), 100)), 1, 1) == (100, 100, 100)
    one = Image.new("1", (3, 3), 0)
    one.putpixel((1, 1), 1)
    img = load_image(one)
    assert px(img, 1, 1) == WHITE and px(img, 0, 0) == (0, 0, 0)


def test_palette_with_and_without_transparency(tmp_path):
    p = quadrants().convert("P")
    img = load_image(p)
    assert px(img, 2, 2) == RED and px(img, 2, 21) == BLUE
    # palette index of red made transparent: composited on white
    path = tmp_path / "t.png"
    red_index = p.getpixel((2, 2))
    p.save(path, transparency=red_index)
    img = load_image(path)
    assert px(img, 2, 2) == WHITE and px(img, 2, 21) == BLUE


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 0))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    image = rgba if mode == "RGBA" else rgba.convert(mode)
    img = load_image(image)
    assert img.mode == "RGB"
    assert px(img, 1, 0) == WHITE
    opaque = px(img, 0, 0)
    half = px(img, 2, 0)
    if mode == "LA":
        assert opaque[0] == opaque[1] == opaque[2] < 128  # red as grey, opaque
        assert half[0] > opaque[0]
    else:
        assert opaque == RED
        assert close(half, (255, 127, 127), 2)
    if mode != "PA":  # PNG cannot store PA; it stays a PIL-object case
        path = tmp_path / f"{mode}.png"
        image.save(path)
        assert px(load_image(path), 1, 0) == WHITE


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))
    assert px(load_image(cmyk), 1, 1) == RED
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=95)
    assert close(px(load_image(path), 1, 1), RED, 20)


def test_16_bit_grayscale(tmp_path):
    a = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    img16 = Image.fromarray(a)
    assert img16.mode == "I;16"
    for source in (img16, tmp_path / "g16.png", tmp_path / "g16.tif"):
        if not isinstance(source, Image.Image):
            img16.save(source)
        img = load_image(source)
        assert img.mode == "RGB"
        assert [px(img, x, y)[0] for x, y in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 100, 255, 200]


def test_32_bit_integer_and_float_grayscale():
    wide = Image.fromarray(np.array([[0, 257 * 50], [65535, 257 * 10]], dtype=np.int32), "I")
    assert [px(load_image(wide), x, y)[0] for x, y in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 50, 255, 10]
    narrow = Image.fromarray(np.array([[0, 17], [255, 3]], dtype=np.int32), "I")
    assert px(load_image(narrow), 1, 0) == (17, 17, 17)
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), "F")
    assert [px(load_image(unit), x, y)[0] for x, y in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 128, 255, 64]


# ---------------------------------------------------------------------------
# EXIF orientation


def exif_photo(path, orientation: int, fmt: str):
    """Save ``quadrants()`` so that a viewer applying EXIF ``orientation`` shows it upright."""
    shown = quadrants()
    # orientation 6: the viewer rotates 90 degrees clockwise; 8: 90 degrees counter-clockwise
    stored = shown.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return stored


@pytest.mark.parametrize("orientation,fmt", [(6, "JPEG"), (8, "PNG"), (6, "PNG"), (8, "JPEG")])
def test_exif_orientation_is_applied(tmp_path, orientation, fmt):
    path = tmp_path / f"exif{orientation}.{fmt.lower()}"
    stored = exif_photo(path, orientation, fmt)
    assert stored.size == (24, 40)  # portrait on disk
    img = load_image(path)
    assert img.size == (40, 24)  # landscape as shown
    assert close(px(img, 2, 2), RED, 20)  # the top-left of the photo as shown is red
    assert close(px(img, 37, 2), GREEN, 20)
    assert close(px(img, 20, 21), BLUE, 20)


# ---------------------------------------------------------------------------
# bad files


def test_missing_empty_folder_and_not_an_image(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)
    (tmp_path / "notes.txt").write_text("hello, not a picture\n")
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(InputError):
        load_image(42)


def test_a_pipe_or_device_is_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")  # opening it would block until a writer came
    for path in (tmp_path / "pipe.png", "/dev/zero"):
        with pytest.raises(InputError, match="not a regular file"):
            load_image(path)


def noisy(w=64, h=48):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_files_are_errors(tmp_path, fmt):
    buf = io.BytesIO()
    noisy().save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError) as err:
        load_image(path)
    assert "\n" not in str(err.value)


def test_corrupt_file_is_an_error(tmp_path):
    buf = io.BytesIO()
    noisy().save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:200] = bytes(140)  # zero out the middle of the compressed data
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError):
        load_image(path)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    with pytest.raises(InputError):
        load_image(garbage)


def test_decompression_bomb_guard_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40), RED).save(path)  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warning above 1000, error above 2000
    with pytest.raises(InputError, match="too large"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(InputError, match="too large"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (40, 40)


def test_truncated_images_are_not_allowed_globally():
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
