"""jaxsteer._src.images: the one image loader (files, bytes, PIL images, arrays -> RGB PIL)."""

import io

import numpy as np
import pytest

from jaxsteer._src import images

Image = pytest.importorskip("PIL.Image")


def _png(arr: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  return buf.getvalue()


def test_every_input_kind_gives_the_same_rgb_pixels(tmp_path):
  rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
  rgba[..., 3] = 255  # opaque, so dropping alpha keeps the RGB values
  path = tmp_path / "x.png"
  path.write_bytes(_png(rgba))
  want = rgba[..., :3]
  for source in (path, str(path), _png(rgba), rgba, Image.fromarray(rgba)):
    im = images.load_image(source)
    assert im.mode == "RGB" and im.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(im), want)
  np.testing.assert_array_equal(np.asarray(images.open_image(path)), want)
  grey = images.load_image(want[..., 0])
  np.testing.assert_array_equal(np.asarray(grey), np.repeat(want[..., :1], 3, axis=-1))


def test_errors_name_the_source(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image" * 10)
  with pytest.raises(ValueError, match=r"item 3: .*bad\.png: cannot decode image"):
    images.open_image(bad, "item 3")
  with pytest.raises(ValueError, match=r"bad\.png: cannot decode image"):
    images.load_image(bad)
  with pytest.raises(ValueError, match="image bytes: cannot decode image"):
    images.load_image(b"garbage")
  with pytest.raises(FileNotFoundError, match=r"item 3: image file not found: .*nope\.png"):
    images.open_image(tmp_path / "nope.png", "item 3")
  with pytest.raises(FileNotFoundError, match=r"image not found: .*nope\.png"):
    images.load_image(tmp_path / "nope.png")
  with pytest.raises(ValueError, match="uint8"):
    images.load_image(np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    images.load_image(np.zeros((4, 4, 5), np.uint8))


def test_as_image_list():
  assert images.as_image_list(None) == []
  assert images.as_image_list("a.png") == ["a.png"]
  assert images.as_image_list(("a", "b")) == ["a", "b"]
