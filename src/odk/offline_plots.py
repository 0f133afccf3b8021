"""DVC's plots page without the network: vega, vega-lite and vega-embed inside the page.

`dvc plots show` writes `dvc_plots/index.html`, whose interactive plots need three scripts
that DVC's default page loads from a CDN: without internet every vega plot stays blank. This
repository's `.dvc/config` points DVC's `plots.html_template` at `.dvc/plots/offline.html`,
a page that holds the three scripts inline (about 0.8 MB; the versions DVC's own page asks
for) and has no `{scripts}` placeholder, so DVC adds no CDN tags. The scripts are BSD-3-Clause;
their licenses travel in the page.

`python -m odk.offline_plots` rebuilds the page from the npm registry (`npm pack`) for the
versions the installed DVC asks for; `remote_references` lists what a rendered page would
fetch from the network (the tests check it is nothing).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TEMPLATE = Path(".dvc/plots/offline.html")
# npm package -> its browser build inside the package tarball
BUILDS = {
    "vega": "package/build/vega.min.js",
    "vega-lite": "package/build/vega-lite.min.js",
    "vega-embed": "package/build/vega-embed.min.js",
}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- DVC's plot page with vega, vega-lite and vega-embed inline, so that it renders without
         network access. Written by `python -m odk.offline_plots`; do not edit by hand. -->
{scripts}
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
SCRIPT = """<script data-package="{name}@{version}">
/* {name} {version} (npm), {path}. License:
{license}
*/
{code}
</script>"""
# Where a page would make the browser fetch something: attributes and CSS.
_FETCHING = re.compile(
    r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)"""
    r"""(?:https?:)?//[^\s"'()<>]+""",
    re.IGNORECASE,
)
_LIBRARY = re.compile(r'<script data-package="[^"]+">.*?</script>', re.DOTALL)


def dvc_script_versions() -> dict[str, str]:
    """The npm packages and versions that DVC's own plots page loads from its CDN."""
    from dvc_render.vega import VegaRenderer

    return dict(re.findall(r"/npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS))


def page_script_versions(page: str) -> dict[str, str]:
    """The packages and versions inlined in a page written by `build_page`."""
    return dict(re.findall(r'<script data-package="([\w-]+)@([\d.]+)">', page))


def remote_references(page: str) -> list[str]:
    """What a rendered page would fetch from the network: remote `src=`/`href=`/`url(...)`.

    The inlined libraries are left out of the search (their code names URLs, e.g. the Vega
    editor, without fetching them), and so is every vega-lite spec's `$schema`, an
    identifier that vega-embed reads but does not fetch.
    """
    return [m.group(0) for m in _FETCHING.finditer(_LIBRARY.sub("", page))]


def build_page(tarballs: dict[str, Path]) -> str:
    """The page for the npm tarballs of vega, vega-lite and vega-embed (`npm pack` output)."""
    scripts = []
    for name, build in BUILDS.items():
        with tarfile.open(tarballs[name]) as tar:
            meta = tar.extractfile("package/package.json")
            code = tar.extractfile(build)
            notice = tar.extractfile("package/LICENSE")
            if meta is None or code is None or notice is None:
                raise ValueError(f"{tarballs[name]} is not the npm package of {name}")
            version = re.search(rb'"version":\s*"([\d.]+)"', meta.read())
            text = code.read().decode()
            license_text = notice.read().decode().replace("*/", "* /")  # inside a comment
        placeholders = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # DVC replaces these
        if version is None or "</script" in text.lower() or any(p in text for p in placeholders):
            raise ValueError(f"{tarballs[name]}: cannot be inlined in the page")
        scripts.append(
            SCRIPT.format(
                name=name,
                version=version.group(1).decode(),
                path=build.removeprefix("package/"),
                license=license_text.strip(),
                code=text.strip(),
            )
        )
    return PAGE.format(scripts="\n".join(scripts))


def npm_pack(versions: dict[str, str], folder: Path) -> dict[str, Path]:
    """Download the npm tarballs of `versions` into `folder` with `npm pack`."""
    specs = [f"{name}@{version}" for name, version in versions.items()]
    subprocess.run(
        ["npm", "pack", "--silent", *specs], cwd=folder, check=True, stdout=subprocess.DEVNULL
    )
    return {name: folder / f"{name}-{version}.tgz" for name, version in versions.items()}


def main(argv: list[str] | None = None) -> int:
    """Rebuild `.dvc/plots/offline.html` for the script versions of the installed DVC."""
    parser = argparse.ArgumentParser(prog="python -m odk.offline_plots", description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=TEMPLATE, help="%(default)s")
    args = parser.parse_args(argv)
    versions = dvc_script_versions()
    with tempfile.TemporaryDirectory() as tmp:
        page = build_page(npm_pack(versions, Path(tmp)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page)
    shown = ", ".join(f"{n}@{v}" for n, v in versions.items())
    print(f"wrote {args.output} ({len(page) / 1e6:.2f} MB): {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
