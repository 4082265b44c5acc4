"""The manual's pictures, regenerated from what `dvc repro` wrote: the report's figures copied into
docs/figures, and a lens page photographed in headless Chromium (Debian's `chromium`).

    python tools/docs_figures.py

Run after `dvc repro` when the figures change, then commit docs/figures.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"
REPORT_FIGURES = ("auroc_by_depth.png", "demo_vlm.png", "demo_gemma3_risk_coverage.png")
LENS_VIEW = ("reports/lens/demo_vlm.html", "#layer=input&lens=latent", "lens_demo_vlm.png")
CHROMIUM_FLAGS = (  # no network, no first-run work, a fresh profile: what a headless run here needs
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def photograph(page: Path, fragment: str, out: Path, size: str = "1200,900") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                "--virtual-time-budget=5000",
                f"--screenshot={out}",
                page.resolve().as_uri() + fragment,
            ],
            check=True,
            capture_output=True,
        )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FIGURES:
        shutil.copyfile(ROOT / "reports" / "figures" / name, OUT / name)
    page, fragment, name = LENS_VIEW
    photograph(ROOT / page, fragment, OUT / name)
    print(f"wrote {len(REPORT_FIGURES) + 1} figures to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
