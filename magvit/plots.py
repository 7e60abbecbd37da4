"""`python -m magvit.plots [ARGS]`: `dvc plots ARGS` (default: `show`) as a page that renders
with no network.

DVC's page loads Vega, Vega-Lite and Vega-Embed from a CDN, so offline it stays blank. This
runs the same `dvc plots` command with `--html-template` set to DVC's own page in which those
libraries are inlined, taken from the bundle that the vl-convert-python wheel ships: the page
(`dvc_plots/index.html` unless `-o` says otherwise) then needs nothing but itself.
`python -m magvit.plots diff EXP_A EXP_B` draws two experiments' curves together.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import vl_convert
from dvc_render.html import PAGE_HTML

VEGA_LITE_VERSION = "5.21"  # DVC's plot templates are Vega-Lite v5 specs


def page_template() -> str:
    """DVC's plots page with the plotting libraries inlined where it puts their CDN tags."""
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    # in a function, the bundle's top-level names cannot clash with the page's scripts;
    # it publishes vegaEmbed, vega and vegaLite on window
    inlined = bundle.replace("</script", "<\\/script")
    script = f"<script>\n(function () {{\n{inlined}\n}})();\n</script>"
    return PAGE_HTML.replace("{scripts}", script)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv) or ["show"]
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "page.html"
        template.write_text(page_template(), encoding="utf-8")
        command = [sys.executable, "-m", "dvc", "plots", *args, "--html-template", str(template)]
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
