"""`dvc plots show` pages work offline: the committed template carries vega itself (checked once in
headless Chromium with no network; here, that the page DVC writes loads nothing from elsewhere)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_plots_page_loads_no_script_from_the_network(tmp_path):
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(REPO / ".dvc/config", tmp_path / ".dvc/config")
    shutil.copytree(REPO / ".dvc/plots", tmp_path / ".dvc/plots", dirs_exist_ok=True)
    (tmp_path / "auroc.csv").write_text("layer,query_token_mlp\n0,0.6\n1,0.7\n")
    subprocess.run([dvc, "plots", "show", "auroc.csv", "-x", "layer", "-o", "page"], cwd=tmp_path, check=True)
    page = (tmp_path / "page/index.html").read_text()
    assert "vegaEmbed(" in page and '"query_token_mlp"' in page
    assert not re.search(r"<script[^>]+src=", page), "a script loaded from elsewhere: blank offline"
    for library in ("vega", "vega-lite", "vega-embed"):
        assert f"{library} " in page.split("BSD-3-Clause")[0], f"{library} is not inlined"
