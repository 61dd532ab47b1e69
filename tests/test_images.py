"""Reading users' folders: every common format loads, every bad file is named, nothing is written."""

import numpy as np
import pytest
from PIL import Image

from dbexp.errors import UserInputError
from dbexp.images import list_image_files, load_image_folder, load_image_rgb


def _photo(size=(40, 24), color=(200, 30, 30)):
    return Image.new("RGB", size, color)


def test_formats_load_as_rgb(tmp_path):
    _photo().save(tmp_path / "a.jpg")
    _photo().save(tmp_path / "b.png")
    _photo().save(tmp_path / "c.webp")
    _photo().save(tmp_path / "d.mpo", save_all=True, append_images=[_photo(color=(0, 0, 255))])
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "e.png")
    Image.new("P", (8, 8), 3).save(tmp_path / "f.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "g.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "h.jpg")
    images = load_image_folder(tmp_path, "data.instance_dir")
    assert len(images) == 8
    assert all(im.mode == "RGB" for im in images)
    assert Image.open(tmp_path / "d.mpo").format == "MPO"
    assert images[3].getpixel((0, 0))[0] > 150  # first frame of the MPO, not the second
    assert images[4].getpixel((0, 0)) == (255, 255, 255)  # transparent → white, not black
    assert images[6].getpixel((0, 0)) == (255, 255, 255)  # 16-bit white stays white
    assert images[7].getpixel((0, 0))[0] > 200  # CMYK red → RGB red


def test_exif_orientation_is_applied(tmp_path):
    image = _photo(size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image_rgb(tmp_path / "rotated.jpg").size == (20, 40)


def test_hidden_and_os_files_are_ignored(tmp_path):
    _photo().save(tmp_path / "a.jpg")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "Thumbs.db").write_bytes(b"\0")
    assert [p.name for p in list_image_files(tmp_path, "k")] == ["a.jpg"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "folder holds no images"),
        (lambda d: (d / "notes.txt").write_text("hi"), "notes.txt: not an image file"),
        (lambda d: (d / "fake.jpg").write_text("not a jpeg"), "fake.jpg: cannot be read as an image"),
        (lambda d: (d / "cut.jpg").write_bytes(_jpeg_bytes()[:300]), "cut.jpg: cannot be read as an image"),
    ],
    ids=["empty", "non-image", "mis-named", "truncated"],
)
def test_bad_folders_name_the_file_and_the_fix(tmp_path, setup, message):
    folder = tmp_path / "photos"
    folder.mkdir()
    setup(folder)
    with pytest.raises(UserInputError, match=message) as err:
        load_image_folder(folder, "data.instance_dir")
    assert "\n" not in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(UserInputError, match=r"data.instance_dir=.*does not exist"):
        list_image_files(tmp_path / "nope", "data.instance_dir")


def test_a_mis_named_but_valid_image_loads(tmp_path):
    _photo().save(tmp_path / "really_a_png.jpg", format="PNG")
    assert load_image_rgb(tmp_path / "really_a_png.jpg").size == (40, 24)


def test_reading_never_writes(tmp_path):
    _photo().save(tmp_path / "a.jpg")
    Image.new("RGBA", (8, 8)).save(tmp_path / "b.png")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    load_image_folder(tmp_path, "k")
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}
    assert before == after


def _jpeg_bytes():
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()
