"""Builders of good and bad dataset uploads for tests.

Every builder writes one file into `directory` and returns its path; the file
name carries the extension an upload would have. `BAD_UPLOADS` pairs each bad
builder with the field and HTTP status the rejection must carry, so API tests
can parametrize over every validation rule with the default limits.
"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from automl_server.datasets import UploadLimits


def image_bytes(
    size: tuple[int, int] = (16, 16), mode: str = "RGB", fmt: str = "PNG", seed: int = 0
) -> bytes:
    """Encoded noise image; `size` is (width, height) as in Pillow."""
    rng = np.random.default_rng(seed)
    width, height = size
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def write_zip(directory: Path, name: str, members: Mapping[str, bytes | None]) -> Path:
    """Zip `members` (name -> content; None makes a directory entry)."""
    path = Path(directory) / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            if data is None:
                zf.writestr(member.rstrip("/") + "/", b"")
            else:
                zf.writestr(member, data)
    return path


def _class_images(classes: Sequence[str] = ("cat", "dog"), per_class: int = 2) -> dict[str, bytes | None]:
    return {
        f"{c}/{i}.png": image_bytes(seed=k * 100 + i) for k, c in enumerate(classes) for i in range(per_class)
    }


# --------------------------------------------------------------------------- good uploads


def good_zip(
    directory: Path,
    classes: Sequence[str] = ("cat", "dog"),
    per_class: int = 3,
    size: tuple[int, int] = (16, 16),
    mode: str = "RGB",
    fmt: str = "PNG",
    wrapper: str | None = None,
) -> Path:
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    prefix = f"{wrapper}/" if wrapper else ""
    members: dict[str, bytes | None] = {
        f"{prefix}{c}/{i}.{ext}": image_bytes(size, mode, fmt, seed=k * 100 + i)
        for k, c in enumerate(classes)
        for i in range(per_class)
    }
    return write_zip(directory, "good.zip", members)


def good_npz(directory: Path, n: int = 20, classes: int = 3, shape: tuple[int, ...] = (8, 8)) -> Path:
    """uint8 images of `shape` ((H,W) or (H,W,C)), labels cycling over all classes."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % classes
    return _write_npz(directory, "good.npz", x=x, y=y)


def _write_npz(directory: Path, name: str, **arrays: np.ndarray) -> Path:
    path = Path(directory) / name
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)  # savez pickles object arrays, which uploads must not be allowed to use
    return path


def _digits(n: int = 12) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(n, 8, 8), dtype=np.uint8)


# --------------------------------------------------------------------------- bad zips


def zip_slip(directory: Path) -> Path:
    return write_zip(directory, "slip.zip", {**_class_images(), "../evil.png": image_bytes()})


def zip_absolute_path(directory: Path) -> Path:
    return write_zip(directory, "absolute.zip", {**_class_images(), "/etc/cat/evil.png": image_bytes()})


def zip_symlink(directory: Path) -> Path:
    path = write_zip(directory, "symlink.zip", _class_images())
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    link.create_system = 3  # Unix, so the mode bits mean what they say
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(link, "/etc/passwd")
    return path


def zip_bomb_ratio(directory: Path) -> Path:
    """A 20 MB member of zeros that deflates to about 20 KB."""
    return write_zip(directory, "bomb.zip", {**_class_images(), "cat/bomb.png": bytes(20 * 1024 * 1024)})


def zip_too_many_entries(directory: Path, n: int = UploadLimits().max_entries + 1) -> Path:
    """`n` empty stored members, written by hand: zipfile needs seconds for 200k."""
    local, central = bytearray(), bytearray()
    for i in range(n):
        name = f"c/{i}.png".encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                               len(name), 0, 0, 0, 0, 0, len(local)) + name  # fmt: skip
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    # Over 65,535 entries the classic 16-bit count saturates and a zip64 record holds the real one.
    count = min(n, 0xFFFF)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), len(local), 0)
    if n > 0xFFFF:
        zip64_at = len(local) + len(central)
        end = (
            struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(central), len(local))
            + struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
            + end
        )
    path = Path(directory) / "many.zip"
    path.write_bytes(bytes(local + central + end))
    return path


def zip_lying_header(directory: Path) -> Path:
    """`cat/0.png` declares 10 bytes in its headers but really holds a whole image."""
    path = write_zip(directory, "lying.zip", _class_images())
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        victim = zf.getinfo("cat/0.png")
    struct.pack_into("<L", data, victim.header_offset + 22, 10)  # local header: uncompressed size
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:  # central directory entries: name at +46, uncompressed size at +24
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len] == b"cat/0.png":
            struct.pack_into("<L", data, pos + 24, 10)
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))
    return path


def zip_unreadable_image(directory: Path) -> Path:
    truncated = image_bytes(seed=7)[:40]
    return write_zip(directory, "unreadable.zip", {**_class_images(), "dog/broken.png": truncated})


def zip_pixel_bomb(directory: Path) -> Path:
    """A PNG of a few bytes whose header declares 30000x30000 pixels."""
    png = bytearray(image_bytes(size=(1, 1), mode="L"))
    struct.pack_into(">LL", png, 16, 30000, 30000)  # IHDR data starts after signature, length, type
    struct.pack_into(">L", png, 29, zlib.crc32(png[12:29]))  # IHDR CRC over type and data
    return write_zip(directory, "pixel_bomb.zip", {**_class_images(), "dog/huge.png": bytes(png)})


def zip_one_class(directory: Path) -> Path:
    return write_zip(directory, "one_class.zip", _class_images(classes=("cat",)))


def zip_empty_class(directory: Path) -> Path:
    return write_zip(directory, "empty_class.zip", {**_class_images(), "bird/": None})


def zip_top_level_images(directory: Path) -> Path:
    return write_zip(directory, "top_level.zip", {**_class_images(), "stray.png": image_bytes()})


def zip_wrong_extension(directory: Path) -> Path:
    return write_zip(directory, "wrong_ext.zip", {**_class_images(), "cat/notes.txt": b"not an image"})


def not_a_zip(directory: Path) -> Path:
    path = Path(directory) / "garbage.zip"
    path.write_bytes(b"this is plain text, not a zip archive\n" * 10)
    return path


def unsupported_type(directory: Path) -> Path:
    path = Path(directory) / "images.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    return path


# --------------------------------------------------------------------------- bad npz files


def npz_missing_y(directory: Path) -> Path:
    return _write_npz(directory, "missing_y.npz", x=_digits())


def npz_bad_shape(directory: Path) -> Path:
    return _write_npz(directory, "bad_shape.npz", x=_digits().reshape(12, 64), y=np.arange(12) % 2)


def npz_length_mismatch(directory: Path) -> Path:
    return _write_npz(directory, "mismatch.npz", x=_digits(), y=np.arange(11) % 2)


def npz_one_class(directory: Path) -> Path:
    return _write_npz(directory, "one_class.npz", x=_digits(), y=np.zeros(12, dtype=np.int64))


def npz_empty_class(directory: Path) -> Path:
    classes = np.array(["ant", "bee", "wasp"])
    return _write_npz(directory, "empty_class.npz", x=_digits(), y=np.arange(12) % 2, classes=classes)


def npz_object_array(directory: Path) -> Path:
    x = np.empty(12, dtype=object)
    x[:] = [np.zeros((8, 8)) for _ in range(12)]
    return _write_npz(directory, "object.npz", x=x, y=np.arange(12) % 2)


Builder = Callable[[Path], Path]

# (builder, field of the rejection, HTTP status) — one entry per validation rule.
BAD_UPLOADS: list[tuple[Builder, str, int]] = [
    (zip_slip, "archive.path", 422),
    (zip_absolute_path, "archive.path", 422),
    (zip_symlink, "archive.path", 422),
    (zip_bomb_ratio, "archive.ratio", 413),
    (zip_too_many_entries, "archive.entries", 413),
    (zip_lying_header, "archive", 422),
    (zip_unreadable_image, "image", 422),
    (zip_pixel_bomb, "image", 422),
    (zip_one_class, "classes", 422),
    (zip_empty_class, "classes", 422),
    (zip_top_level_images, "classes", 422),
    (zip_wrong_extension, "image", 422),
    (not_a_zip, "file", 422),
    (unsupported_type, "file", 415),
    (npz_missing_y, "y", 422),
    (npz_bad_shape, "x", 422),
    (npz_length_mismatch, "y", 422),
    (npz_one_class, "classes", 422),
    (npz_empty_class, "classes", 422),
    (npz_object_array, "x", 422),
]

# What each rejection message must name, so a user can find the problem.
NAMED_IN_DETAIL: dict[Builder, str] = {
    zip_slip: "../evil.png",
    zip_absolute_path: "/etc/cat/evil.png",
    zip_symlink: "cat/link.png",
    zip_bomb_ratio: "cat/bomb.png",
    zip_too_many_entries: str(UploadLimits().max_entries),
    zip_lying_header: "cat/0.png",
    zip_unreadable_image: "dog/broken.png",
    zip_pixel_bomb: "dog/huge.png",
    zip_one_class: "cat",
    zip_empty_class: "bird",
    zip_top_level_images: "stray.png",
    zip_wrong_extension: "cat/notes.txt",
    not_a_zip: ".npz",
    unsupported_type: "images.tar.gz",
    npz_missing_y: "'y'",
    npz_bad_shape: "(12, 64)",
    npz_length_mismatch: "11",
    npz_one_class: "at least 2",
    npz_empty_class: "wasp",
    npz_object_array: "pickle",
}
