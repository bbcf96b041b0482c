"""Sphinx extension: fail the build when the documentation does not cover ``ms_optim.__all__``.

After optax's ``docs/ext/coverage_check.py``. Configure in ``conf.py``::

    extensions = [..., "coverage_check"]
    coverage_check_module = "ms_optim"
    coverage_check_language = "en"      # or "zh_cn"

English (``"en"``): every name of ``__all__`` must be documented (a ``py`` domain object
``ms_optim.<Name>``) on the API page ``api`` or on a page autosummary generated for it
(``generated/ms_optim.<Name>``).

Chinese (``"zh_cn"``): every name must have its hand-written page
``api_python/ms_optim.<Name>.rst`` that documents ``ms_optim.<Name>`` with a ``py:class`` /
``py:function`` directive; a page for a name that is no longer public is an error too.

The check runs after all sources are read (``env-check-consistency``) and raises
:class:`sphinx.errors.ExtensionError`, so the build fails with or without ``-W``.
"""
import importlib
import os

from sphinx.errors import ExtensionError
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)


def _public_names(module_name):
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if not names:
        raise ExtensionError(f"coverage_check: module '{module_name}' has no (or an empty) __all__")
    return module, list(names)


def english_problems(module_name, py_objects):
    """``py_objects``: dict fullname -> docname. Returns a list of human-readable problems."""
    _, names = _public_names(module_name)
    problems = []
    for name in names:
        full = f"{module_name}.{name}"
        docname = py_objects.get(full)
        if docname is None:
            problems.append(f"'{full}' is in __all__ but not documented in api.rst")
        elif docname != "api" and not docname.startswith("generated/"):
            problems.append(f"'{full}' is documented in '{docname}', not on the API page")
    return problems


def chinese_problems(module_name, srcdir, py_objects):
    _, names = _public_names(module_name)
    problems = []
    api_dir = os.path.join(srcdir, "api_python")
    for name in names:
        full = f"{module_name}.{name}"
        path = os.path.join(api_dir, f"{full}.rst")
        if not os.path.isfile(path):
            problems.append(f"'{full}' has no Chinese page api_python/{full}.rst")
        elif py_objects.get(full) != f"api_python/{full}":
            problems.append(f"api_python/{full}.rst does not document '{full}' with py:class/py:function")
    if os.path.isdir(api_dir):
        for fname in sorted(os.listdir(api_dir)):
            prefix = module_name + "."
            if fname.endswith(".rst") and fname.startswith(prefix):
                name = fname[len(prefix):-len(".rst")]
                if name not in names:
                    problems.append(f"api_python/{fname} documents '{name}', which is not in __all__")
    return problems


def _check(app, env):
    objects = env.get_domain("py").objects
    py_objects = {full: entry.docname for full, entry in objects.items()}
    module_name = app.config.coverage_check_module
    lang = app.config.coverage_check_language
    if lang == "en":
        problems = english_problems(module_name, py_objects)
    elif lang == "zh_cn":
        problems = chinese_problems(module_name, app.srcdir, py_objects)
    else:
        raise ExtensionError(f"coverage_check_language must be 'en' or 'zh_cn', got {lang!r}")
    if problems:
        raise ExtensionError("API documentation coverage check failed:\n  " + "\n  ".join(problems))
    LOGGER.info("coverage_check: all %s public names of %s documented (%s)",
                len(_public_names(module_name)[1]), module_name, lang)


def setup(app):
    app.add_config_value("coverage_check_module", "ms_optim", "env")
    app.add_config_value("coverage_check_language", "en", "env")
    app.connect("env-check-consistency", _check)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
