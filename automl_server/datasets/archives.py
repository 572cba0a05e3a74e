"""Zip archives of class folders: safety checks on every member before
anything is decompressed (path tricks, bomb-like sizes and ratios, entry
counts), then images decoded one at a time under a pixel limit of our own."""

from __future__ import annotations

import io
import os
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from automl_server.datasets.upload import (
    _CHUNK,
    _EOCD,
    _EOCD64,
    _RATIO_MIN_BYTES,
    ACCEPTED_FORMATS,
    IMAGE_EXTENSIONS,
    ZIP_LAYOUT,
    Arrays,
    DatasetRejected,
    DatasetStats,
    UploadLimits,
)

# --------------------------------------------------------------------------- archive safety


def _check_upload_size(path: Path, limits: UploadLimits) -> None:
    size = os.path.getsize(path)
    if size == 0:
        # Said plainly: "not a valid zip" would send the user looking for a broken archive.
        raise DatasetRejected("file", "the uploaded file is empty (0 bytes); upload a .zip of class folders of "
                              "PNG/JPEG images, or an .npz with arrays x and y")
    if size > limits.max_upload_bytes:
        detail = f"upload is {size} bytes; the limit is {limits.max_upload_bytes}"
        raise DatasetRejected("file.size", detail, 413)


def _declared_entry_count(path: Path) -> int | None:
    """Entry count from the end-of-central-directory record, read before zipfile builds an object
    per entry (millions of tiny entries would cost gigabytes). None when it cannot be found."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - (_EOCD.size + 0xFFFF)))
        tail = fh.read()
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        return None
    total = _EOCD.unpack_from(tail, pos)[4]
    # A saturated 16-bit count defers to the zip64 record that sits, with its 20-byte locator,
    # right before the classic one.
    start = pos - 20 - _EOCD64.size
    if total == 0xFFFF and start >= 0 and tail[start : start + 4] == b"PK\x06\x06":
        total = _EOCD64.unpack_from(tail, start)[7]
    return None if total == 0xFFFF else total


def _open_zip(path: Path, limits: UploadLimits, what: str) -> zipfile.ZipFile:
    count = _declared_entry_count(path)
    if count is not None and count > limits.max_entries:
        raise _too_many_entries(count, limits)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetRejected("file", f"not a valid {what} ({exc}); upload {ACCEPTED_FORMATS}") from exc
    try:
        _check_members(zf.infolist(), limits)
    except DatasetRejected:
        zf.close()
        raise
    return zf


def _too_many_entries(count: int, limits: UploadLimits) -> DatasetRejected:
    detail = f"archive has {count} entries; at most {limits.max_entries} are accepted"
    return DatasetRejected("archive.entries", detail, 413)


def _check_members(infos: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    if len(infos) > limits.max_entries:
        raise _too_many_entries(len(infos), limits)
    for info in infos:
        _check_member(info, limits)
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_uncompressed_bytes:
        detail = f"archive expands to {declared} bytes; at most {limits.max_uncompressed_bytes} accepted"
        raise DatasetRejected("archive.size", detail, 413)


def _check_member(info: zipfile.ZipInfo, limits: UploadLimits) -> None:
    name, problem = info.filename, None
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        problem = "is an absolute path"
    elif "\\" in name:
        problem = "contains a backslash"
    elif ".." in name.split("/"):
        problem = "contains a '..' component"
    elif stat.S_ISLNK(info.external_attr >> 16):
        problem = "is a symbolic link"
    elif info.flag_bits & 0x1:
        problem = "is encrypted"
    if problem:
        accepted = "plain unencrypted files with relative paths like cat/1.png"
        raise DatasetRejected("archive.path", f"member {name!r} {problem}; accepted: {accepted}")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _RATIO_MIN_BYTES and ratio > limits.max_compression_ratio:
        sizes = f"{info.compress_size} -> {info.file_size} bytes"
        detail = f"member {name!r} expands {ratio:.0f}x ({sizes}); at most {limits.max_compression_ratio:g}x"
        raise DatasetRejected("archive.ratio", detail + " is accepted for members over 1 MiB", 413)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, remaining: int) -> bytes:
    """Read one member into memory, counting the bytes really produced.

    zipfile already stops at the declared size and then fails the CRC check, so a header that
    under-states the size surfaces as a corrupt member; the count is a second line of defence
    that does not depend on that."""
    buf = bytearray()
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(_CHUNK):
                buf += chunk
                if len(buf) > min(info.file_size, remaining):
                    limit = "its declared size" if len(buf) > info.file_size else "the total size limit"
                    detail = f"member {info.filename!r} expands beyond {limit}; re-create the zip"
                    raise DatasetRejected("archive.size", detail + " with a standard tool", 413)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise _corrupt_member(info.filename, exc) from exc
    return bytes(buf)


def _corrupt_member(name: str, exc: BaseException) -> DatasetRejected:
    detail = f"member {name!r} cannot be read ({exc}); its data does not match its header"
    return DatasetRejected("archive", detail + ". Re-create the archive with a standard zip tool")


# --------------------------------------------------------------------------- zip of class folders


def _zip_layout(infos: list[zipfile.ZipInfo]) -> list[tuple[str, zipfile.ZipInfo]]:
    """Map image members to class names, sorted by (class, member name)."""
    split = [(i, [p for p in i.filename.split("/") if p]) for i in infos]
    # macOS resource forks and hidden files (.DS_Store, ._x.png) are tool litter, not data.
    entries = [(i, p) for i, p in split if p and p[0] != "__MACOSX" and not any(n[0] == "." for n in p)]
    files = [(i, parts) for i, parts in entries if not i.is_dir()]
    if not files:
        raise DatasetRejected("classes", f"the zip contains no images; expected {ZIP_LAYOUT}")
    # One folder wrapping everything (what zipping a folder produces) is not a class.
    if len({parts[0] for _, parts in entries}) == 1 and all(len(p) >= 3 for _, p in files):
        entries = [(i, parts[1:]) for i, parts in entries if len(parts) > 1]
        files = [(i, parts) for i, parts in entries if not i.is_dir()]
    members: list[tuple[str, zipfile.ZipInfo]] = []
    for info, parts in files:
        if not info.filename.lower().endswith(IMAGE_EXTENSIONS):
            accepted = ", ".join(IMAGE_EXTENSIONS)
            raise DatasetRejected("image", f"member {info.filename!r} is not an image; accepted: {accepted}")
        if len(parts) != 2:
            where = "at the top level" if len(parts) == 1 else "nested below its class folder"
            raise DatasetRejected("classes", f"image {info.filename!r} is {where}; expected {ZIP_LAYOUT}")
        members.append((parts[0], info))
    _check_classes({c for c, _ in members}, {p[0] for i, p in entries if i.is_dir() and len(p) == 1})
    return sorted(members, key=lambda m: (m[0], m[1].filename))


def _check_classes(with_images: set[str], folders: set[str]) -> None:
    empty = sorted(folders - with_images)
    if empty:
        names = ", ".join(map(repr, empty))
        raise DatasetRejected("classes", f"class folder(s) {names} hold no images; each needs at least one")
    if len(with_images) < 2:
        found = ", ".join(map(repr, sorted(with_images)))
        detail = f"found {len(with_images)} class ({found}); at least 2 class folders are needed"
        raise DatasetRejected("classes", detail + ", e.g. cat/ and dog/")


def _iter_images(zf: zipfile.ZipFile, limits: UploadLimits) -> Iterator[tuple[str, Image.Image]]:
    """Yield (class, decoded image) one member at a time, in layout order."""
    total = 0
    for cls, info in _zip_layout(zf.infolist()):
        data = _read_member(zf, info, limits.max_uncompressed_bytes - total)
        total += len(data)
        yield cls, _decode_image(info.filename, data, limits)


def _decode_image(name: str, data: bytes, limits: UploadLimits) -> Image.Image:
    # Pillow's own bomb check uses a process-wide limit (and catch_warnings is not thread-safe),
    # so ours is applied here from the header, before any pixel data is decoded. Pillow's
    # DecompressionBombError, for still larger images, lands below as "cannot be decoded".
    try:
        img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))  # only the decoders we accept
        pixels = img.width * img.height
        if pixels > limits.max_image_pixels:
            detail = f"image {name!r} has {img.width}x{img.height} = {pixels} pixels"
            raise DatasetRejected("image", f"{detail}; at most {limits.max_image_pixels} are accepted")
        img.load()
    except DatasetRejected:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes means "unreadable"
        reason = "not a PNG or JPEG file" if isinstance(exc, UnidentifiedImageError) else str(exc)
        if isinstance(exc, Image.DecompressionBombError):
            reason = f"over {limits.max_image_pixels} pixels, the most accepted"
        detail = f"image {name!r} cannot be decoded ({reason}); accepted: valid PNG or JPEG files"
        raise DatasetRejected("image", detail) from exc
    return img


def _is_colour(img: Image.Image) -> bool:
    if img.mode in ("P", "PA"):
        palette = img.getpalette() or []
        # Only palette entries the pixels use matter; PA colours are (index, alpha).
        used = [c[0] if isinstance(c, tuple) else int(c) for _, c in img.getcolors(256) or []]
        return any(len(set(palette[3 * i : 3 * i + 3])) > 1 for i in used)
    return img.mode not in ("1", "L", "LA", "La", "I", "F") and not img.mode.startswith("I;16")


def _inspect_zip(path: Path, limits: UploadLimits) -> DatasetStats:
    counts: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    colour = False
    with _open_zip(path, limits, "zip") as zf:
        for cls, img in _iter_images(zf, limits):
            counts[cls] += 1
            sizes[(img.height, img.width)] += 1
            colour = colour or _is_colour(img)
            img.close()
    (height, width), _ = sizes.most_common(1)[0]
    classes = sorted(counts)
    counted, channels = {c: counts[c] for c in classes}, 3 if colour else 1
    return DatasetStats("zip", classes, counted, counts.total(), height, width, channels, len(sizes) == 1)


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if mode == "L" and (img.mode == "I" or img.mode.startswith("I;16")):
        # Pillow clips 16-bit values to 255 when converting to L; scale instead.
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(wide.astype(np.uint8), "L")
    return img.convert(mode)


def _load_zip(path: Path, limits: UploadLimits) -> Arrays:
    # Two passes (validate + stats, then decode into a preallocated array) keep at most one
    # decoded image in memory besides the result.
    stats = _inspect_zip(path, limits)
    height, width, mode = stats.image_height, stats.image_width, "RGB" if stats.channels == 3 else "L"
    x = np.empty((stats.num_samples, height, width, stats.channels), dtype=np.uint8)
    y = np.empty(stats.num_samples, dtype=np.int64)
    index = {c: i for i, c in enumerate(stats.classes)}
    with _open_zip(path, limits, "zip") as zf:
        for n, (cls, img) in enumerate(_iter_images(zf, limits)):
            converted = _to_mode(img, mode)
            if converted.size != (width, height):
                converted = converted.resize((width, height), Image.Resampling.BILINEAR)
            x[n] = np.asarray(converted).reshape(height, width, stats.channels)
            y[n] = index[cls]
    return x, y, stats.classes
