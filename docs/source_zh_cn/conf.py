"""Sphinx configuration: Chinese documentation of ms_optim (hand-written API pages in api_python/)."""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "_ext")))

from common_conf import *  # noqa: E402,F401,F403  (shared settings and extensions)

language = "zh_CN"
coverage_check_language = "zh_cn"
html_title = f"ms_optim {release} 文档"
# The zh API pages are hand-written; nothing is generated from docstrings here.
autosummary_generate = False

# MindSpore's Chinese API documentation titles a note "说明" (Sphinx's zh_CN catalog says "备注").
# The html writer reads these labels when it writes each admonition.
from sphinx.locale import admonitionlabels  # noqa: E402

admonitionlabels["note"] = "说明"
