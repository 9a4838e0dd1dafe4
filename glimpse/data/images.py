"""Image files in any size and mode -> fixed-size tensors, with their boxes moved the same way.

`read_image` converts every PIL mode explicitly (grayscale, palette, 16-bit, RGBA, CMYK);
`letterbox` resizes keeping the aspect ratio and pads, and moves the boxes with the pixels
(torchvision.transforms.v2 does both, on tensors and `BoundingBoxes` alike).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

CHANNELS = (1, 3)


class CorruptImageError(ValueError):
    """An image file that is missing, unreadable or truncated; the message names the file."""


def _open(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise CorruptImageError(f"image file {path} does not exist; put it there or fix the annotation that names it")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise CorruptImageError(f"image file {path} cannot be read ({err})") from err


def _decode(image: Image.Image, path: str) -> Image.Image:
    try:
        image.load()  # raises for a truncated file (PIL.ImageFile.LOAD_TRUNCATED_IMAGES stays False)
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"image file {path} is corrupt or truncated ({err})") from err
    return image


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C+1) with alpha last -> (H, W, C): colour * alpha / 255, rounded."""
    colour, alpha = rgba[..., :-1].astype(np.uint32), rgba[..., -1:].astype(np.uint32)
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def to_array(image: Image.Image, channels: int = 3) -> np.ndarray:
    """A decoded PIL image as uint8 (H, W, channels), every mode converted explicitly.

    RGB/L pass through; "1" and 16/32-bit grayscale ("I;16", "I") become 8-bit ("I" values are
    taken as 16-bit and divided by 257); palette images keep their colours; an alpha channel
    is composited onto black (the padding colour); CMYK and YCbCr go through PIL's RGB
    conversion. channels=1 turns colour into luma with PIL's ITU-R 601-2 weights.
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels={channels}: choose 1 (grayscale) or 3 (RGB)")
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode.startswith("I"):  # I, I;16, I;16B, I;16L: 16-bit grayscale
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), mode="L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(f"image mode {mode!r} is not supported; convert the file to RGB or grayscale")
    array = np.array(image)  # a writable copy, for torch
    if image.mode in ("LA", "RGBA"):
        array = _composite_on_black(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == channels:
        return np.ascontiguousarray(array)
    if channels == 3:  # grayscale -> RGB: the same value in each channel
        return np.repeat(array, 3, axis=-1)
    return np.asarray(Image.fromarray(array, mode="RGB").convert("L"))[..., None]


def read_image(
    path: str, channels: int = 3, draft_size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode ``path`` to uint8 (channels, H, W) and the file's own (width, height).

    ``draft_size`` (w, h) lets a JPEG decode at a reduced scale that is still at least that
    large (much faster for big photos); the returned tensor is then smaller than the file.
    """
    image = _open(path)
    with image:
        file_size = image.size
        if draft_size is not None and image.format == "JPEG":
            image.draft(None, draft_size)
        array = to_array(_decode(image, path), channels)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), file_size


def check_image(path: str) -> str | None:
    """Decode ``path`` cheaply (a JPEG at 1/8 scale still reads all its data); None if it is
    fine, else what is wrong with it."""
    try:
        read_image(path, 3, draft_size=(1, 1))
    except (CorruptImageError, ValueError) as err:
        return str(err)
    return None


def letterbox_geometry(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Resized (w, h) and (left, top) padding that fit ``width x height`` into ``size`` = (H, W)
    with the aspect ratio kept and the image centred."""
    out_h, out_w = size
    scale = min(out_w / width, out_h / height)
    new_w = min(out_w, max(1, round(width * scale)))
    new_h = min(out_h, max(1, round(height * scale)))
    return new_w, new_h, (out_w - new_w) // 2, (out_h - new_h) // 2


def letterbox(image: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize uint8 (C, H, W) to fit ``size`` = (H, W) keeping its aspect ratio, pad with 0
    (centred), and move ``boxes`` (N, 4) [x1, y1, x2, y2] in pixels exactly as the pixels move.

    Boxes scale by new_w / W and new_h / H (the rounded sizes actually used), then shift by the
    padding; if the image already has the size, nothing changes.
    """
    _, height, width = image.shape
    new_w, new_h, left, top = letterbox_geometry(width, height, size)
    picture = tv_tensors.Image(image)
    boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
    if (new_h, new_w) != (height, width):
        picture = F.resize(picture, [new_h, new_w], antialias=True)
        boxes = F.resize(boxes, [new_h, new_w])
    padding = [left, top, size[1] - new_w - left, size[0] - new_h - top]
    if any(padding):
        picture, boxes = F.pad(picture, padding, fill=0), F.pad(boxes, padding)
    return picture.as_subclass(torch.Tensor), boxes.as_subclass(torch.Tensor)
