"""Downloads one source distribution from the package index pip is configured with, and checks
its sha256.

    python3 examples/bench/fetch_sdist.py NAME VERSION SHA256 DEST

The index is pip's own setting, in pip's order: $PIP_INDEX_URL, else `index-url` from pip's
configuration files (`pip config list`), else PyPI. It is read with the "simple" repository API
every index serves (PEP 691 JSON when offered, else PEP 503 HTML), which lists files with their
hashes. `pip download --no-binary :all:` would find the same file but first installs the sdist's
build backend (scikit-build-core, cmake, ninja) to read its metadata, which costs minutes and is
not needed to compile the vendored C++.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from html.parser import HTMLParser

PYPI_SIMPLE = "https://pypi.org/simple/"
JSON_API = "application/vnd.pypi.simple.v1+json"


def configured_index_url() -> str:
    """The index pip would use: environment first, then pip's configuration, then PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    # `pip config list` prints the merged settings as KEY='VALUE' lines (`pip config get`
    # misses values from $PIP_CONFIG_FILE in pip 23).
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    settings = dict(re.findall(r"^([\w.:-]+)='(.*)'$", listing, flags=re.MULTILINE))
    # A command's own section overrides [global], as in pip.
    for key in ("download.index-url", "install.index-url", "global.index-url"):
        if settings.get(key):
            return settings[key]
    return PYPI_SIMPLE


class _Anchors(HTMLParser):
    """The (href, text) of every link of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((self._href, data.strip()))
            self._href = None


def project_files(index_url: str, name: str) -> list[tuple[str, str, str | None]]:
    """(filename, absolute url, sha256 or None) of every file the index lists for `name`."""
    normalized = re.sub(r"[-_.]+", "-", name).lower()
    page_url = urllib.parse.urljoin(index_url.rstrip("/") + "/", normalized + "/")
    request = urllib.request.Request(page_url, headers={"Accept": f"{JSON_API}, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=60) as response:
        content_type = response.headers.get("Content-Type", "")
        body = response.read().decode("utf-8")
        page_url = response.geturl()  # after redirects: relative links resolve against it
    if content_type.startswith(JSON_API):
        return [
            (f["filename"], urllib.parse.urljoin(page_url, f["url"]), f.get("hashes", {}).get("sha256"))
            for f in json.loads(body)["files"]
        ]
    anchors = _Anchors()
    anchors.feed(body)
    files = []
    for href, text in anchors.links:
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        digest = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        files.append((text, url, digest))
    return files


def fetch(name: str, version: str, sha256: str, dest: str) -> None:
    index_url = configured_index_url()
    wanted = {f"{stem}-{version}.tar.gz" for stem in (name, name.replace("-", "_"))}
    matches = [f for f in project_files(index_url, name) if f[0] in wanted]
    if not matches:
        sys.exit(f"{index_url} lists no sdist of {name} {version}")
    filename, url, listed = matches[0]
    if listed is not None and listed != sha256:
        sys.exit(f"{index_url} lists sha256 {listed} for {filename}, expected {sha256}")
    print(f"fetching {filename} from {index_url}", file=sys.stderr)
    partial = dest + ".part"
    urllib.request.urlretrieve(url, partial)
    with open(partial, "rb") as downloaded:
        actual = hashlib.sha256(downloaded.read()).hexdigest()
    if actual != sha256:
        os.remove(partial)
        sys.exit(f"{filename} from {url} has sha256 {actual}, expected {sha256}")
    os.replace(partial, dest)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    fetch(*sys.argv[1:])
