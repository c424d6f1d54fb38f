"""Sphinx configuration of fastrnn's documentation (``python -m sphinx -W docs docs/_build/html``)."""

import fastrnn

project = "fastrnn"
author = "the fastrnn developers"
release = version = fastrnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # NumPy-style docstrings
    "sphinx.ext.mathjax",
    "myst_parser",  # the pages written in Markdown
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
myst_heading_anchors = 2  # links to sections, e.g. guide.md#the-command-line
html_theme = "alabaster"

# fastrnn.torch's page documents a PyTorch module; without PyTorch installed (it is optional,
# and not in the docs extra: pip's default build is several GB) autodoc reads it against a mock.
try:
    import torch  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["torch"]
