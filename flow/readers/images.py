"""Image stacks: a multi-page TIFF, or single images (PNG, JPEG, BMP, TIFF) in a
directory, a glob, or a list of files.

Single images are taken in natural order (``p2`` before ``p10``) unless
their names carry map coordinates as kikuchipy's directory reader expects
(``..._x5y10.png`` or ``...-5-10.png``), which then also give the scan
shape; otherwise ``--scan-shape`` is required for more than one frame. A
multi-page TIFF written by tifffile with a 4-D shape keeps that scan shape.
Colour images are converted to grey (exact for grey images saved as RGB).

Examples
--------
>>> natural_key("p10.png") > natural_key("p2.png")
True
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, batched
from diffraflow.schemas.errors import InputFileError, TruncatedFileError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ImageStackReader", "TiffReader", "natural_key", "IMAGE_EXTENSIONS", "expand_image_sources"]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif")
_XY_PATTERNS = (r"_x(\d+)y(\d+)\.\w+$", r"-(\d+)-(\d+)\.\w+$")


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders embedded numbers numerically.

    Examples
    --------
    >>> sorted(["a10", "a2", "a1"], key=natural_key)
    ['a1', 'a2', 'a10']
    """
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def expand_image_sources(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named by a directory, a glob or explicit paths, in natural order.

    Examples
    --------
    >>> expand_image_sources(["/nonexistent/*.png"])
    []
    """
    files: list[Path] = []
    for src in sources:
        text = str(src)
        path = Path(text)
        if path.is_dir():
            found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS]
            files.extend(sorted(found, key=lambda p: natural_key(p.name)))
        elif any(c in text for c in "*?["):
            files.extend(sorted((Path(p) for p in glob.glob(text) if Path(p).is_file()),
                                key=lambda p: natural_key(p.name)))
        else:
            files.append(path)
    return files


def _to_gray(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
        im = im.convert("L")
    return np.asarray(im)


def _read_image(path: Path) -> np.ndarray:
    """One image as a 2-D array; TIFFs through tifffile, the rest through Pillow."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                arr = np.rint(arr[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(arr.dtype)
            return arr
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return _to_gray(im)
    except FileNotFoundError:
        raise InputFileError(str(path), "no such image file", "check the path or glob") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise TruncatedFileError(str(path), f"cannot decode image ({exc})",
                                 "the image is truncated or garbled: re-export it or remove it") from None


class ImageStackReader(Reader):
    """Reader of single images, one per scan point.

    Parameters
    ----------
    path
        A directory, a glob, or the first file (see ``files``).
    files
        Explicit list of image files in scan order (overrides ``path``).

    Examples
    --------
    >>> # ImageStackReader("scan/*.png", scan_shape=(2, 2)).probe().n_frames  -> 4
    """

    format_name = "image_stack"
    extensions = ("png", "jpg", "jpeg", "bmp", "gif")
    modality = None

    def __init__(self, path: str | os.PathLike[str], *, files: Sequence[str | Path] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.files = expand_image_sources(list(files) if files else [path])

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        return head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM", b"GIF8"))

    def _probe(self) -> Probe:
        if not self.files:
            raise self.error("no image files found", "check the directory or glob (extensions: "
                             + ", ".join(IMAGE_EXTENSIONS) + ")")
        missing = [p for p in self.files if not p.is_file()]
        if missing:
            raise InputFileError(str(missing[0]), "no such image file", "check the path or glob")
        scan: tuple[int, int] | None = None
        for pattern in _XY_PATTERNS:
            matches = [re.search(pattern, p.name) for p in self.files]
            if len(self.files) > 1 and all(matches):
                xy = np.array([[int(m.group(1)), int(m.group(2))] for m in matches])  # type: ignore[union-attr]
                xs, ys = np.unique(xy[:, 0]), np.unique(xy[:, 1])
                if len(xs) * len(ys) == len(self.files):
                    order = np.lexsort((np.searchsorted(xs, xy[:, 0]), np.searchsorted(ys, xy[:, 1])))
                    self.files = [self.files[i] for i in order]
                    scan = (len(ys), len(xs))
                break
        if len(self.files) == 1:
            scan = (1, 1)
        first = _read_image(self.files[0])
        if first.ndim != 2:
            raise InputFileError(str(self.files[0]), f"image has shape {list(first.shape)}, not a 2-D pattern",
                                 "convert to single-channel images")
        names = [p.name for p in self.files]
        attrs = {"detector": {"shape": list(first.shape)},
                 "original_metadata": {"files": names[:1000], "n_files": len(names),
                                       "folder": str(self.files[0].parent)}}
        self._shape, self._dtype = first.shape, first.dtype
        return Probe(n_frames=len(self.files), scan_shape=scan, det_shape=tuple(first.shape),
                     dtype=np.dtype(first.dtype), attrs=attrs)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        for lo, hi in batched(len(self.files), batch):
            frames = []
            for path in self.files[lo:hi]:
                img = _read_image(path)
                if img.shape != tuple(probe.det_shape) or img.dtype != probe.dtype:
                    raise InputFileError(str(path), f"image is {list(img.shape)} {img.dtype}, the first is "
                                         f"{list(probe.det_shape)} {probe.dtype}", "all images must share "
                                         "shape and bit depth; remove or re-export this one")
                frames.append(img)
            yield np.stack(frames)


class TiffReader(Reader):
    """Reader of TIFF files: one frame per page (or a tifffile-shaped series).

    Examples
    --------
    >>> # TiffReader("stack.tif", scan_shape=(3, 4)).probe().n_frames  -> 12
    """

    format_name = "tiff"
    extensions = ("tif", "tiff")
    modality = None

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._tif: Any = None

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def _probe(self) -> Probe:
        import tifffile

        try:
            tif = self._tif = tifffile.TiffFile(self.path)
            series = tif.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
            raise self.truncated(f"cannot read as TIFF ({exc})", "the TIFF is truncated or garbled: re-export it") from None
        if len(shape) >= 3 and shape[-1] in (3, 4) and series.axes.endswith("S"):
            raise self.error(f"colour TIFF of shape {list(shape)}", "save single-channel (grey) patterns")
        if len(shape) < 2:
            raise self.error(f"TIFF series of shape {list(shape)} is not a stack of 2-D patterns",
                             "save 2-D patterns, one per page")
        det = (int(shape[-2]), int(shape[-1]))
        n = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        scan: tuple[int, int] | None = None
        if len(shape) == 4:
            scan = (int(shape[0]), int(shape[1]))
        elif n == 1:
            scan = (1, 1)
        self._pages: Any = series.pages
        if len(tif.series) > 1:
            # Pages appended one file-write at a time form one series each: take every page as a frame.
            self._pages = tif.pages
            first = tif.pages[0]
            if any(tuple(sr.shape[-2:]) != det or np.dtype(sr.dtype) != dtype for sr in tif.series):
                raise self.error("the TIFF holds images of different shapes or types",
                                 "write one pattern shape and type per file")
            shape = (len(tif.pages), *tuple(first.shape))
            n, scan = int(np.prod(shape[:-2])), None
        page_shape = tuple(self._pages[0].shape) if len(self._pages) else ()
        self._per_page = int(np.prod(page_shape[:-2])) if len(page_shape) > 2 else 1
        self._n_pages = len(self._pages)
        if self._per_page * self._n_pages != n:
            raise self.truncated(f"TIFF series says {n} frames but holds {self._n_pages} pages of "
                                 f"{self._per_page}")
        attrs = {"detector": {"shape": list(det)},
                 "original_metadata": {"tiff_series_shape": list(shape), "tiff_axes": series.axes,
                                       "pages": self._n_pages}}
        return Probe(n_frames=n, scan_shape=scan, det_shape=det, dtype=dtype.newbyteorder("="), attrs=attrs)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        pages = self._pages
        pages_per_batch = max(1, batch // self._per_page)
        for lo, hi in batched(self._n_pages, pages_per_batch):
            try:
                frames = [np.asarray(pages[i].asarray()) for i in range(lo, hi)]
            except (OSError, ValueError, IndexError) as exc:
                raise self.truncated(f"cannot read TIFF page {lo}-{hi - 1} ({exc})") from None
            yield np.stack(frames).reshape(-1, *probe.det_shape).astype(probe.dtype, copy=False)
