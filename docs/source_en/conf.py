"""Sphinx configuration: English documentation of ms_optim (API pages from the docstrings)."""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "_ext")))

from common_conf import *  # noqa: E402,F401,F403  (shared settings and extensions)

language = "en"
coverage_check_language = "en"
html_title = f"ms_optim {release}"
