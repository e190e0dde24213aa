"""A tiny wheel and a PEP 503 "simple" index for it, served by :class:`LoopbackServer`.

Why: the registry mirror runs the real ``pip download`` against ``--index-url``; the tests give
pip a real index on 127.0.0.1 instead of the public one.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

from tests.helpers.http_server import Route


def normalize(name: str) -> str:
    """PEP 503 project-name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(directory: Path, name: str, version: str, members: dict[str, bytes],
                requires: tuple[str, ...] = ()) -> Path:
    """Write ``<name>-<version>-py3-none-any.whl`` holding `members` plus minimal metadata;
    `requires` become ``Requires-Dist`` lines (dependencies pip must not fetch with --no-deps)."""
    dist = re.sub(r"[-_.]+", "_", name)
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = dict(members)
    deps = "".join(f"Requires-Dist: {r}\n" for r in requires)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{deps}".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: lite-rec-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def sha256_of(path: Path) -> str:
    """``"sha256:<hex>"`` of a file, in the form the config's checksum fields take."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def index_routes(name: str, wheel: Path) -> dict[str, Route]:
    """Routes for ``/simple/``, ``/simple/<name>/`` and ``/files/<file>`` (index URL: ``/simple/``).
    `wheel` may be any distribution file (an sdist too, to test ``--only-binary``)."""
    wheel = Path(wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    project = normalize(name)
    html = "text/html"
    root = f'<!DOCTYPE html><html><body><a href="{project}/">{project}</a></body></html>'
    page = (
        f'<!DOCTYPE html><html><body><a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>'
        "</body></html>"
    )
    return {
        "/simple/": Route(root.encode(), content_type=html),
        f"/simple/{project}/": Route(page.encode(), content_type=html),
        f"/files/{wheel.name}": Route(wheel.read_bytes()),
    }
