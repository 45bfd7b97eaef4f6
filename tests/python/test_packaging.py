"""The REST server's requirements are listed twice by necessity: as the package's `server`
extra (pip install cortexstream[server]) and in examples/server/requirements.txt (installed by
scripts before the package is built). The two lists must agree."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return sorted(line for line in lines if line)


def test_the_server_extra_and_the_requirements_file_agree() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = sorted(project["optional-dependencies"]["server"])
    assert extra == requirement_lines(REPO / "examples/server/requirements.txt")


def test_the_console_script_runs_the_server_main() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["cortexstream-server"] == "cortexstream.server.main:main"
