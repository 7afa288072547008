"""Sphinx configuration of the authfsm documentation (furo, MyST Markdown pages, autodoc)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # builds from a checkout without installing it
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import authfsm  # noqa: E402

project = "authfsm"
author = "authfsm developers"
copyright = "authfsm developers"
release = authfsm.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "cli_reference",  # docs/_ext: the CLI reference from authfsm.cli.build_parser
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links are checked too

# The API reference: public names only, in the order __all__ and the sources give them.
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"authfsm {release}"
html_static_path: list[str] = []
# No intersphinx: the build must pass offline (CI, tests/test_docs.py); standard-library names
# render as plain text.
