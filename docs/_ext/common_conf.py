"""Settings shared by ``source_en/conf.py`` and ``source_zh_cn/conf.py``."""
import os
import sys

DOCS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(DOCS_DIR)
# Document the working tree, not whatever ms_optim happens to be installed.
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("GLOG_v", "3")  # keep MindSpore's C++ logging out of the build log

import ms_optim  # noqa: E402  (needs the path above)

project = "ms_optim"
author = "ms_optim contributors"
copyright = "2025, ms_optim contributors"  # noqa: A001  (Sphinx config name)
version = release = getattr(ms_optim, "__version__", "0.0.0")

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    # Copies MathJax 3 into _static/mathjax and points mathjax_path at it: no CDN, math
    # renders offline. (The package's import name really contains hyphens.)
    "sphinx-mathjax-offline",
    "coverage_check",
    "ms_optim_autodoc",
]

# Every formula is in the docstrings as ".. math::"; they are rendered by the bundled MathJax.
# mathjax_path is set by sphinx-mathjax-offline; do not set it here.

# MindSpore docstring sections: Args/Raises/Note/Examples are Google style; Inputs, Outputs and
# Supported Platforms are MindSpore's own and are rendered as titled blocks.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = ["Inputs", "Outputs", "Supported Platforms"]
napoleon_use_rtype = False

autosummary_generate = True
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # never pull MindSpore's own docstrings into our pages
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}

# Doctests (make doctest): CPU only, fixed seeds; Ascend-only lines carry "# doctest: +SKIP".
doctest_global_setup = """
import os
os.environ.setdefault("GLOG_v", "3")
import numpy as np
import mindspore as ms
ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)
np.random.seed(0)
ms.set_seed(0)
"""
doctest_test_doctest_blocks = "default"
trim_doctest_flags = True

coverage_check_module = "ms_optim"

# MindSpore's API documentation uses a Read-the-Docs style theme; sphinx_rtd_theme bundles its
# fonts, CSS and scripts (jQuery through sphinxcontrib-jquery), so pages load nothing remote.
html_theme = "sphinx_rtd_theme"
html_theme_options = {"navigation_depth": 3, "collapse_navigation": False,
                      "style_external_links": False, "prev_next_buttons_location": "bottom"}
html_static_path = [os.path.join(DOCS_DIR, "_static")]
html_css_files = ["ms_optim.css"]
html_show_sourcelink = False
templates_path = [os.path.join(DOCS_DIR, "_templates")]
exclude_patterns = ["_build"]
