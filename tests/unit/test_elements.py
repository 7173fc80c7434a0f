"""Decoding examples from real image, text, audio and feature files (tmp_path and memory://)."""

from __future__ import annotations

import io
import uuid
import wave
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from jobs.datasets.elements import (
    ElementKind,
    Example,
    check_feature_length,
    class_names,
    decode_example,
    decode_stored,
    encode_example,
    layout_of,
)
from ncloud.errors import InvalidInput, ServerError
from ncloud.manifest import ColumnType, Manifest, ManifestRow, parse_manifest, read_manifest

LIMIT = 1 << 20


class Storage:
    """Reads through fsspec and remembers every URL it read, so tests can prove what was not."""

    def __init__(self) -> None:
        self.read: list[str] = []
        self.sized: list[str] = []

    def read_bytes(self, url: str) -> bytes:
        self.read.append(url)
        fs, path = fsspec.core.url_to_fs(url)
        return bytes(fs.cat_file(path))

    def size_of(self, url: str) -> int:
        self.sized.append(url)
        fs, path = fsspec.core.url_to_fs(url)
        return int(fs.size(path))


def image_bytes(fmt: str, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(out, fmt)
    return out.getvalue()


def wav_bytes(channels: int, width: int = 2, frames: int = 50) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(channels)
        clip.setsampwidth(width)
        clip.setframerate(8000)
        samples = np.arange(frames * channels, dtype="<i4").view(np.uint8).reshape(-1, 4)
        clip.writeframes(samples[:, :width].tobytes())
    return out.getvalue()


def dataset(tmp_path: Path, manifest: bytes, files: dict[str, bytes]) -> Manifest:
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return parse_manifest(manifest, str(tmp_path))


def decode_all(m: Manifest, store: Storage, **kw: int) -> list[Example]:
    layout = layout_of(m)
    classes = class_names(m, layout, store.read_bytes, size_of=store.size_of)
    limit = kw.pop("max_file_bytes", LIMIT)
    return [
        decode_example(m, layout, r, store.read_bytes, classes, limit, store.size_of, **kw)
        for r in m.rows
    ]


def test_images_with_integer_labels(tmp_path: Path) -> None:
    m = dataset(
        tmp_path,
        b"@FILE\t@ASCII_INT\nimg/a.jpg\t0\nimg/b.png\t2\nimg/c.png\t1\nimg/d.png\t1\n",
        {
            "img/a.jpg": image_bytes("JPEG"),
            "img/b.png": image_bytes("PNG"),
            "img/c.png": image_bytes("PNG", "L"),
            "img/d.png": image_bytes("PNG", "RGBA"),
        },
    )
    assert layout_of(m).kind is ElementKind.IMAGE
    examples = decode_all(m, Storage())
    assert [e.x.shape for e in examples if isinstance(e.x, np.ndarray)] == [
        (6, 8, 3),
        (6, 8, 3),
        (6, 8, 1),
        (6, 8, 3),
    ]
    assert all(isinstance(e.x, np.ndarray) and e.x.dtype == np.uint8 for e in examples)
    assert [(e.row, e.label) for e in examples] == [(2, 0), (3, 2), (4, 1), (5, 1)]


def test_text_files_with_class_names(tmp_path: Path) -> None:
    m = dataset(
        tmp_path,
        b"filename,label\na.txt,pos\nb.txt,neg\nc.txt,pos\n",
        {"a.txt": "très bien".encode(), "b.txt": b"\xef\xbb\xbfbad", "c.txt": b"ok"},
    )
    store = Storage()
    layout = layout_of(m)
    assert class_names(m, layout, store.read_bytes) == ["neg", "pos"]
    examples = decode_all(m, store)
    assert [(e.x, e.label, e.kind) for e in examples] == [
        ("très bien", 1, ElementKind.TEXT),
        ("bad", 0, ElementKind.TEXT),
        ("ok", 1, ElementKind.TEXT),
    ]


def test_inline_text_manifest(tmp_path: Path) -> None:
    m = parse_manifest(b'text,label\n"good, really",b\nawful,a\n', str(tmp_path))
    examples = decode_all(m, Storage())
    assert [(e.x, e.label) for e in examples] == [("good, really", 1), ("awful", 0)]


def test_audio_mono_and_stereo(tmp_path: Path) -> None:
    m = dataset(
        tmp_path,
        b"@FILE\t@ASCII_INT\nmono.wav\t0\nstereo.wav\t1\n",
        {"mono.wav": wav_bytes(1), "stereo.wav": wav_bytes(2)},
    )
    mono, stereo = decode_all(m, Storage())
    assert isinstance(mono.x, np.ndarray) and isinstance(stereo.x, np.ndarray)
    assert mono.x.shape == (50, 1) and stereo.x.shape == (50, 2)
    assert stereo.x.dtype == np.int16
    assert stereo.x[1].tolist() == [2, 3]


@pytest.mark.parametrize("width", [1, 3])
def test_audio_other_sample_widths_are_refused(tmp_path: Path, width: int) -> None:
    m = dataset(tmp_path, b"@FILE\nclip.wav\n", {"clip.wav": wav_bytes(1, width)})
    with pytest.raises(InvalidInput, match=f"{8 * width}-bit audio; only 16-bit PCM"):
        decode_all(m, Storage())


def test_feature_files_and_columns(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([1, 2, 3], dtype=np.int64))
    m = dataset(
        tmp_path,
        b"@FILE\t@ASCII_INT\na.npy\t0\nb.csv\t1\nc.tsv\t0\n",
        {"a.npy": buf.getvalue(), "b.csv": b"0.5,1.5,2\n", "c.tsv": b"1\t2\t3"},
    )
    examples = decode_all(m, Storage())
    assert [e.x.tolist() for e in examples if isinstance(e.x, np.ndarray)] == [
        [1.0, 2.0, 3.0],
        [0.5, 1.5, 2.0],
        [1.0, 2.0, 3.0],
    ]
    assert all(isinstance(e.x, np.ndarray) and e.x.dtype == np.float32 for e in examples)
    columns = parse_manifest(b"@ASCII_FLOAT\t@ASCII_FLOAT\t@ASCII_INT\n0.5\t2\t3\n", "memory://x")
    (ex,) = decode_all(columns, Storage())
    assert isinstance(ex.x, np.ndarray) and ex.x.tolist() == [0.5, 2.0] and ex.label == 3
    unlabelled = parse_manifest(b"a,b\n0.5,1.5\n", "memory://x")
    assert layout_of(unlabelled).label_column is None
    assert decode_all(unlabelled, Storage())[0].label == -1
    with pytest.raises(InvalidInput, match="manifest line 3: 2 features, but earlier rows have 3"):
        check_feature_length(Example(3, np.zeros(2, np.float32), 0, ElementKind.FEATURES), 3)


def test_npy_that_is_not_a_1d_vector(tmp_path: Path) -> None:
    matrix = io.BytesIO()
    np.save(matrix, np.zeros((2, 2)))
    # A header that claims ten billion floats over a few bytes of data must not be allocated.
    lying = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        lying, {"descr": "<f8", "fortran_order": False, "shape": (10_000_000_000,)}
    )
    m = dataset(
        tmp_path,
        b"@FILE\na.npy\nb.npy\n",
        {"a.npy": matrix.getvalue(), "b.npy": lying.getvalue() + b"\x00" * 16},
    )
    layout, store = layout_of(m), Storage()
    with pytest.raises(InvalidInput, match=r"manifest line 2: .*not 1-D numbers"):
        decode_example(m, layout, m.rows[0], store.read_bytes, None, LIMIT, store.size_of)
    with pytest.raises(InvalidInput, match=r'manifest line 3: file "b.npy" is truncated'):
        decode_example(m, layout, m.rows[1], store.read_bytes, None, LIMIT, store.size_of)


def test_aeon_label_files_with_names_and_integers(tmp_path: Path) -> None:
    files = {"a.png": image_bytes("PNG"), "b.png": image_bytes("PNG")}
    named = dataset(
        tmp_path,
        b"a.png,labels/a.txt\nb.png,labels/b.txt\n",
        {**files, "labels/a.txt": b"zebra\n", "labels/b.txt": b"ant"},
    )
    store = Storage()
    assert class_names(named, layout_of(named), store.read_bytes) == ["ant", "zebra"]
    assert [e.label for e in decode_all(named, store)] == [1, 0]
    numbered = dataset(
        tmp_path / "n",
        b"a.png,a.txt\nb.png,b.txt\n",
        {**files, "a.txt": b"7\r\n", "b.txt": b"3"},
    )
    assert class_names(numbered, layout_of(numbered), store.read_bytes) is None
    assert [e.label for e in decode_all(numbered, store)] == [7, 3]


def test_missing_file(tmp_path: Path) -> None:
    m = dataset(tmp_path, b"@FILE\t@ASCII_INT\nimg/0017.jpg\t1\n", {})
    with pytest.raises(InvalidInput) as caught:
        decode_all(m, Storage())
    assert str(caught.value) == (
        'manifest line 2: file "img/0017.jpg" not found under the manifest root'
    )


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    data = image_bytes(fmt, size=(64, 64))
    m = dataset(tmp_path, b"@FILE\nx.jpg\n", {"x.jpg": data[: len(data) // 2]})
    with pytest.raises(
        InvalidInput, match=r'manifest line 2: file "x.jpg" is truncated or corrupt'
    ):
        decode_all(m, Storage())


def test_text_file_named_jpg(tmp_path: Path) -> None:
    m = dataset(tmp_path, b"@FILE\nnotes.jpg\n", {"notes.jpg": b"just some text\n"})
    with pytest.raises(InvalidInput, match=r'file "notes.jpg" is not a JPEG or PNG image'):
        decode_all(m, Storage())


def test_other_image_formats_are_refused(tmp_path: Path) -> None:
    m = dataset(tmp_path, b"@FILE\npic.png\n", {"pic.png": image_bytes("GIF", "L")})
    with pytest.raises(InvalidInput, match="is not a JPEG or PNG image"):
        decode_all(m, Storage())


def test_image_over_the_pixel_limit(tmp_path: Path) -> None:
    m = dataset(tmp_path, b"@FILE\nbig.png\n", {"big.png": image_bytes("PNG", size=(100, 60))})
    with pytest.raises(InvalidInput, match="100x60 pixels, over the 5000 pixel limit"):
        decode_all(m, Storage(), max_pixels=5000)
    assert decode_all(m, Storage(), max_pixels=6000)[0].kind is ElementKind.IMAGE


def test_pillow_bomb_warning_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    m = dataset(tmp_path, b"@FILE\nbig.png\n", {"big.png": image_bytes("PNG", size=(100, 60))})
    with pytest.raises(InvalidInput, match="more pixels than the server allows"):
        decode_all(m, Storage())


def test_file_over_the_size_limit_is_never_read(tmp_path: Path) -> None:
    m = dataset(
        tmp_path, b"@FILE\t@ASCII_INT\nok.png\t0\nbig.png\t1\n", {"ok.png": image_bytes("PNG")}
    )
    with open(tmp_path / "big.png", "wb") as sparse:
        sparse.truncate(300 << 20)
    store = Storage()
    with pytest.raises(InvalidInput) as caught:
        decode_example(m, layout_of(m), m.rows[1], store.read_bytes, None, 256 << 20, store.size_of)
    assert str(caught.value) == 'manifest line 3: file "big.png" is 300 MB, over the 256 MB limit'
    assert store.sized == [f"{tmp_path}/big.png"]
    assert store.read == []


def test_non_integer_and_negative_labels(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes("PNG"))
    m = Manifest(
        (ColumnType.FILE, ColumnType.ASCII_INT),
        (ManifestRow(4, ("a.png", "cat")), ManifestRow(5, ("a.png", "-3"))),
        str(tmp_path),
    )
    layout, store = layout_of(m), Storage()
    with pytest.raises(InvalidInput, match='manifest line 4: "cat" is not an integer'):
        decode_example(m, layout, m.rows[0], store.read_bytes, None, LIMIT, store.size_of)
    with pytest.raises(InvalidInput, match="manifest line 5: label -3 is not a class index"):
        decode_example(m, layout, m.rows[1], store.read_bytes, None, LIMIT, store.size_of)


def test_unknown_class_and_unsafe_row(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_bytes(b"hi")
    (tmp_path / "secret.txt").write_bytes(b"not yours")
    m = Manifest(
        (ColumnType.FILE, ColumnType.STRING),
        (ManifestRow(2, ("a.txt", "cat")), ManifestRow(3, ("../secret.txt", "cat"))),
        str(tmp_path / "ds"),
    )
    layout, store = layout_of(m), Storage()
    with pytest.raises(InvalidInput, match='manifest line 2: label "cat" is not one of the 1 c'):
        decode_example(m, layout, m.rows[0], store.read_bytes, ["dog"], LIMIT, store.size_of)
    with pytest.raises(InvalidInput, match=r"manifest line 3: .*leaves the manifest root"):
        decode_example(m, layout, m.rows[1], store.read_bytes, ["cat"], LIMIT, store.size_of)
    assert store.read == [] and store.sized == []
    decode_example(m, layout, m.rows[0], store.read_bytes, ["cat"], LIMIT, store.size_of)
    assert store.read == [f"{tmp_path}/ds/a.txt"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            b"@FILE\t@ASCII_INT\na.jpg\t1\nb.wav\t1\n",
            "line 3: an audio file, but line 2 is an image file",
        ),
        (b"@FILE\t@FILE\t@ASCII_INT\na.jpg\tb.jpg\t1\n", "make no sense"),
        (b"@FILE\t@ASCII_FLOAT\na.jpg\t1.5\n", "label column .* is @ASCII_FLOAT"),
        (b"@FILE\na.gif\n", 'line 2: file "a.gif" is not a supported type'),
    ],
)
def test_layouts_that_make_no_sense(text: bytes, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        layout_of(parse_manifest(text, "memory://x"))


def test_bad_text_and_wav_bytes(tmp_path: Path) -> None:
    m = dataset(tmp_path, b"@FILE\na.txt\n", {"a.txt": b"ok \xff"})
    with pytest.raises(InvalidInput, match=r'file "a.txt" is not UTF-8 \(byte 0xff at offset 3'):
        decode_all(m, Storage())
    w = dataset(tmp_path, b"@FILE\na.wav\n", {"a.wav": wav_bytes(1)[:60]})
    with pytest.raises(InvalidInput, match=r'file "a.wav" is (truncated|not a 16-bit PCM)'):
        decode_all(w, Storage())


def test_dataset_on_memory_filesystem() -> None:
    folder = f"memory://t-{uuid.uuid4().hex}/ds"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{folder}/img/a.png", image_bytes("PNG", "L"))
    fs.pipe(f"{folder}/manifest.csv", b"image,label\nimg/a.png,bird\n")
    store = Storage()
    (ex,) = decode_all(read_manifest(f"{folder}/manifest.csv"), store)
    assert store.read == [f"{folder}/img/a.png"]
    assert isinstance(ex.x, np.ndarray) and ex.x.shape == (6, 8, 1) and ex.label == 0


@pytest.mark.parametrize(
    "ex",
    [
        Example(1, np.arange(24, dtype=np.uint8).reshape(2, 4, 3), 0, ElementKind.IMAGE),
        Example(2, "naïve text", 1, ElementKind.TEXT),
        Example(3, np.array([[1, -2], [300, -32768]], dtype=np.int16), 0, ElementKind.AUDIO),
        Example(4, np.array([0.5, -1.25], dtype=np.float32), 0, ElementKind.FEATURES),
    ],
)
def test_storage_round_trip(ex: Example) -> None:
    data, shape = encode_example(ex)
    back = decode_stored(ex.kind, data, shape)
    if isinstance(ex.x, str):
        assert back == ex.x and shape == [len(ex.x.encode())]
    else:
        assert isinstance(back, np.ndarray) and back.dtype == ex.x.dtype
        assert shape == list(ex.x.shape) and np.array_equal(back, ex.x)


def test_stored_bytes_that_do_not_fit_the_shape() -> None:
    with pytest.raises(ServerError, match="does not fit its shape"):
        decode_stored(ElementKind.FEATURES, b"\x00" * 6, [2])
