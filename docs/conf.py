"""Sphinx configuration of fastrnn's documentation (``python -m sphinx -W docs docs/_build/html``)."""

import fastrnn

project = "fastrnn"
author = "the fastrnn developers"
release = version = fastrnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # NumPy-style docstrings
    "sphinx.ext.mathjax",
    "myst_parser",  # the pages that include README.md's sections
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
# README's sections start at level 2 when a page includes them.
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
