"""Image folders as a data source: JPEG/PNG/BMP files, decoded one sample at a time.

A folder with images at its top level is unlabelled (all images below it are used). A folder
whose top level holds only subfolders follows the ImageFolder convention: each subfolder is a
class, and its images carry that class as label.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgepack.calibration.preprocess import Preprocess
from edgepack.calibration.source import Source, fmt_shape
from edgepack.errors import CalibrationError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
# Pixels of one image (Pillow's own default bound, 8192 x ~10923): checked from the header, before
# anything is decoded; a 50000 x 50000 PNG of a few KB would otherwise ask for 7.5 GB.
MAX_IMAGE_PIXELS = 89_478_485


def _walk(root: Path) -> tuple[list[str], int]:
    """Relative paths of the images below ``root`` (sorted, hidden entries skipped) and the count of other files."""
    found: list[str] = []
    others = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTS):
                found.append(name if rel == "." else os.path.join(rel, name))
            else:
                others += 1
    return found, others


def list_images(root: Path, *, what: str,
                class_index: Mapping[str, int] | None = None) -> tuple[list[str], np.ndarray | None, list[str] | None]:
    """``(files, labels, class_names)``; labels and class names are None for a flat folder."""
    if not root.is_dir():
        raise CalibrationError(f"{what} {root}: no such folder")
    files, others = _walk(root)
    if not files:
        extra = f" ({others} other files)" if others else ""
        raise CalibrationError(f"{what} {root}: empty folder: no JPEG/PNG/BMP images found{extra}",
                               hint="put .jpg/.png/.bmp files in it, or class subfolders of them")
    if any(os.sep not in f for f in files):
        return files, None, None
    classes = sorted({f.split(os.sep, 1)[0] for f in files})
    if class_index is None:
        # digit folder names are class ids already ("0".."9"); otherwise sorted order, as ImageFolder does
        class_index = ({c: int(c) for c in classes} if all(c.isdigit() for c in classes)
                       else {c: i for i, c in enumerate(classes)})
    missing = [c for c in classes if c not in class_index]
    if missing:
        raise CalibrationError(f"{what} {root}: class folder {missing[0]!r} is not one of the bundle's labels",
                               hint="name class folders after the lines of labels.txt")
    labels = np.fromiter((class_index[f.split(os.sep, 1)[0]] for f in files), np.int64, len(files))
    return files, labels, classes


def _layout_for(shape: Sequence[int | None]) -> str:
    """NCHW when channels are clearly first (1 or 3 first, not last); NHWC otherwise."""
    if len(shape) == 3 and shape[0] in (1, 3) and shape[-1] not in (1, 3):
        return "nchw"
    return "nhwc"


class ImageFolderSource(Source):
    """Images decoded with Pillow and preprocessed on read."""

    raw_range = (0.0, 255.0)

    def __init__(self, root: Path, model_shape: Sequence[int | None], model_dtype: str, *, what: str,
                 preprocess: Preprocess | None = None, class_index: Mapping[str, int] | None = None) -> None:
        self.root = root
        self.where = f"{what} {root}"
        self.files, self.labels, self.class_names = list_images(root, what=what, class_index=class_index)
        shape = tuple(model_shape)
        if len(shape) != 3:
            raise CalibrationError(f"{self.where}: images need a model input of rank 3 (H, W, C); "
                                   f"this one is {fmt_shape(shape)}", hint="give .npy/.npz/CSV data for it")
        p = preprocess or Preprocess()
        layout = p.layout or _layout_for(shape)
        channels = shape[0] if layout == "nchw" else shape[-1]
        color = p.color or ("grayscale" if channels == 1 else "rgb")
        # Decoding choices are made explicit, so the manifest tells the device app all of them.
        self.preprocess = replace(p, color=color, layout=layout, dtype=p.dtype or model_dtype)
        self.model_dtype = model_dtype
        self.hwc = (shape[1], shape[2], shape[0]) if layout == "nchw" else shape

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        p = self.preprocess
        size = p.crop or p.resize
        h, w = size if size is not None else self.hwc[:2]
        c = 1 if p.color == "grayscale" else 3
        return (c, h, w) if p.layout == "nchw" else (h, w, c)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.preprocess.dtype)

    def locate(self, i: int) -> str:
        return f"file {self.files[i]}"

    def _too_large(self, i: int, pixels: int | None) -> CalibrationError:
        size = f" ({pixels:,} pixels)" if pixels else ""
        return CalibrationError(f"{self.where}: file {self.files[i]} (sample {i}) is larger than edgepack's limit of "
                                f"{MAX_IMAGE_PIXELS:,} pixels per image{size}",
                                hint="resize the image before using it as data")

    def _decode(self, i: int) -> np.ndarray:
        import warnings

        from PIL import Image, UnidentifiedImageError

        path = self.root / self.files[i]
        try:
            with warnings.catch_warnings():  # Pillow warns between its limit and twice that: refused here
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    width, height = img.size
                    if width * height > MAX_IMAGE_PIXELS:
                        raise self._too_large(i, width * height)
                    img.load()
                    arr = self.preprocess.image_to_array(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            said = re.search(r"\((\d+) pixels\)", str(err))  # Pillow checked the header before edgepack could
            raise self._too_large(i, int(said.group(1)) if said else None) from err
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise CalibrationError(f"{self.where}: file {self.files[i]} (sample {i}) is not a readable image: "
                                   f"{str(err).splitlines()[0] if str(err) else type(err).__name__}",
                                   hint="remove or re-save the file") from err
        want = self.hwc if self.preprocess.resize is None and self.preprocess.crop is None else arr.shape
        if any(w is not None and w != s for w, s in zip(want, arr.shape)):
            raise CalibrationError(f"{self.where}: file {self.files[i]} decodes to shape {fmt_shape(arr.shape)}, "
                                   f"the model input needs {fmt_shape(want)}",
                                   hint=f"resize it with --preprocess resize={want[0]}x{want[1]}")
        return arr

    def read(self, idx: np.ndarray) -> np.ndarray:
        batch = np.stack([self._decode(int(i)) for i in idx]) if len(idx) else \
            np.empty((0, *self.hwc), np.uint8)
        return self.preprocess.apply_numeric(batch, self.model_dtype)
