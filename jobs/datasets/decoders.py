"""Bytes to arrays, for each kind of input a dataset or a prediction request may hold:
JPEG/PNG images, UTF-8 text, 16-bit PCM WAV audio and numeric features. Every error
names the input (``where``); the rules are in jobs.datasets.elements' docstring."""

from __future__ import annotations

import io
import re
import warnings
import wave

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ncloud.errors import InvalidInput

DEFAULT_MAX_PIXELS = 89_478_485


def decode_image(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG/PNG bytes to uint8 [H, W, 1 or 3], refusing bombs, truncation and other formats."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; that is a bomb for us too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only the formats we document: other Pillow plugins widen the attack surface.
            img: Image.Image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
            width, height = img.size
            if width * height > max_pixels:
                raise InvalidInput(
                    f"{where} is {width}x{height} pixels, over the {max_pixels} pixel limit"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):
                wide = np.asarray(img).astype(np.int64)
                pixels = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
            elif img.mode in ("1", "L", "LA"):
                pixels = np.array(img.convert("L"), dtype=np.uint8)
            else:
                pixels = np.array(img.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(f"{where} has more pixels than the server allows") from None
    except UnidentifiedImageError:
        raise InvalidInput(f"{where} is not a JPEG or PNG image") from None
    except (OSError, EOFError, SyntaxError, ValueError) as e:
        raise InvalidInput(f"{where} is truncated or corrupt ({e})") from None
    return np.ascontiguousarray(pixels if pixels.ndim == 3 else pixels[:, :, None])


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 bytes to text."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"{where} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def decode_audio(data: bytes, where: str) -> np.ndarray:
    """16-bit PCM WAV bytes to int16 [frames, channels]."""
    try:
        with wave.open(io.BytesIO(data), "rb") as clip:
            width, channels, frames = clip.getsampwidth(), clip.getnchannels(), clip.getnframes()
            if width != 2:
                raise InvalidInput(
                    f"{where} is {8 * width}-bit audio; only 16-bit PCM WAV is supported"
                )
            raw = clip.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise InvalidInput(f"{where} is not a 16-bit PCM WAV file ({e})") from None
    if frames == 0 or len(raw) != frames * channels * 2:
        raise InvalidInput(f"{where} is truncated or holds no audio frames")
    return np.frombuffer(raw, dtype="<i2").reshape(frames, channels).astype(np.int16)


def decode_features(name: str, data: bytes, where: str) -> np.ndarray:
    """A .npy 1-D numeric array, or numbers separated by commas, tabs or spaces, to float32."""
    if name.strip().lower().endswith(".npy"):
        return finite_float32(_load_npy(data, where), where)
    cells = re.split(r"[,\s]+", decode_text(data, where).strip())
    try:
        values = np.array([float(c) for c in cells if c], dtype=np.float64)
    except ValueError:
        raise InvalidInput(f"{where} holds something other than numbers") from None
    return finite_float32(values, where)


def _load_npy(data: bytes, where: str) -> np.ndarray:
    fp = io.BytesIO(data)
    try:
        # Check the header before np.load, which allocates whatever shape the header claims.
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        if dtype.kind not in "biuf" or len(shape) != 1:
            raise InvalidInput(f"{where} is a {dtype} array of shape {shape}, not 1-D numbers")
        if shape[0] * dtype.itemsize > len(data):
            raise InvalidInput(f"{where} is truncated")
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InvalidInput(f"{where} is not a readable .npy array ({e})") from None
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"{where} is not a single .npy array")
    return array


def finite_float32(values: np.ndarray, where: str) -> np.ndarray:
    if values.size == 0:
        raise InvalidInput(f"{where} holds no numbers")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(values, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput(f"{where} holds NaN or a number too large for float32")
    return out
