"""Write .dvc/plots/offline.html: DVC's plot page with vega, vega-lite and vega-embed inlined.

`dvc plots show` loads those three libraries from a CDN, so without internet its page is blank. DVC reads
`plots.html_template` from .dvc/config; this template carries the libraries themselves (BSD-3-Clause,
from the npm registry). Run once per version change: `python tools/offline_plots_template.py`.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # what DVC's specs target
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {credits}, BSD-3-Clause, inlined so the page needs no network -->
{libraries}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def library(package: str, version: str, workdir: Path) -> str:
    """The package's minified browser build, from `npm pack` (the registry tarball)."""
    subprocess.run(["npm", "pack", f"{package}@{version}", "--silent"], cwd=workdir, check=True)
    with tarfile.open(workdir / f"{package}-{version}.tgz") as tar:
        member = tar.extractfile(f"package/build/{package}.min.js")
        assert member is not None
        code = member.read().decode()
    if "</script" in code or "{plot_divs}" in code:
        raise ValueError(f"{package}@{version} cannot be inlined as it is")
    return f"    <script>{code}</script>"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        libraries = "\n".join(library(p, v, Path(tmp)) for p, v in PACKAGES.items())
    credits = ", ".join(f"{p} {v}" for p, v in PACKAGES.items())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(PAGE.format(credits=credits, libraries=libraries))
    print(f"{OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
