"""Documentation checks (fast; part of ``make test``).

1. Every public docstring has MindSpore's sections, in MindSpore's order.
2. English/Chinese parity: each name of ``ms_optim.__all__`` has its hand-written zh page, whose
   signature equals the code's, whose 参数/异常 entries match the Args/Raises entries one for one,
   and which carries the same formulas, platforms and examples.
3. Every ``>>>`` example of every public docstring runs as a doctest on CPU, outputs compared.
4. The Sphinx html build of both languages succeeds with ``-W`` and loads no script from a URL
   (MathJax is bundled: formulas render offline).
"""
import doctest
import inspect
import os
import re
import subprocess
import sys
import time

import mindspore as ms
import pytest
from mindspore import nn

import ms_optim
import ms_optim.ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
ZH_API = os.path.join(DOCS, "source_zh_cn", "api_python")
sys.path.insert(0, os.path.join(DOCS, "_ext"))

from ms_optim_sigs import check_against_inspect, source_signature  # noqa: E402

PUBLIC = list(ms_optim.__all__)
# Public constants (e.g. THOR_RECOMMENDED): documented by a ``#:`` comment and ``.. py:data::``.
PUBLIC_DATA = [n for n in PUBLIC if not callable(getattr(ms_optim, n))]
PUBLIC_API = [n for n in PUBLIC if n not in PUBLIC_DATA]
OPS = list(ms_optim.ops.__all__)
# Public functions that build and return an optimizer: they carry the formula and Inputs/Outputs.
OPTIMIZER_FACTORIES = {"thor"}

# MindSpore's order. Note/Warning come after the formula and its legend, before Args.
ORDER = ["Warning", "Note", "Args", "Inputs", "Outputs", "Returns", "Raises",
         "Supported Platforms", "Examples"]
HEADER_RE = re.compile(r"^(%s):\s*$" % "|".join(re.escape(h) for h in ORDER + [
    "Arguments", "Parameters", "Return", "Yields", "Example", "Notes", "Warnings", "Tip",
    "References", "See Also", "Attributes"]))
PLATFORMS_RE = re.compile(r"^(``(Ascend|GPU|CPU)``)(\s+``(Ascend|GPU|CPU)``)*$")


# ------------------------------------------------------------------------------------------
# Docstring parsing
# ------------------------------------------------------------------------------------------
def _indent(line):
    return len(line) - len(line.lstrip(" "))


def parse_docstring(doc):
    """Return (preamble lines, [(header, body lines)]) of a Google/MindSpore docstring."""
    lines = inspect.cleandoc(doc).splitlines()
    preamble, sections = [], []
    for line in lines:
        m = HEADER_RE.match(line)
        if m and _indent(line) == 0:
            sections.append((m.group(1), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return preamble, sections


def section(sections, name):
    for header, body in sections:
        if header == name:
            return body
    return None


def _entries(body, pattern):
    """Lines of ``body`` at its outermost indentation that match ``pattern``."""
    nonblank = [ln for ln in body if ln.strip()]
    if not nonblank:
        return []
    base = min(_indent(ln) for ln in nonblank)
    return [ln.strip() for ln in nonblank if _indent(ln) == base and re.match(pattern, ln.strip())]


ARG_RE = r"^\*{0,2}\w+\s*(\([^)]*\))?\s*:"
RAISE_RE = r"^[A-Z]\w*(\.\w+)*\s*:"


def math_blocks(lines):
    """The bodies of all ``.. math::`` directives in ``lines``, whitespace-normalised."""
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)\.\. math::\s*$", lines[i])
        if not m:
            i += 1
            continue
        base = len(m.group(1))
        i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            body.append(lines[i].strip())
            i += 1
        blocks.append(" ".join(" ".join(body).split()))
    return blocks


def _math_structure(latex):
    """A formula with the words of its ``\\text{...}`` parts removed: the zh pages translate
    those words and must keep everything else (the mathematics) equal to the docstring."""
    return re.sub(r"\\text\{[^{}]*\}", r"\\text{}", latex)


def example_lines(lines):
    return [ln.strip() for ln in lines if ln.strip().startswith((">>>", "..."))
            and not ln.strip().startswith(".. ")]


def _public_objects():
    return [(f"ms_optim.{n}", getattr(ms_optim, n)) for n in PUBLIC]


def _public_methods(cls):
    """Methods defined by ``cls`` itself in ms_optim, public, not Cell.construct."""
    out = []
    for name, val in cls.__dict__.items():
        if name.startswith("_") or name == "construct":
            continue
        func = val.__func__ if isinstance(val, (staticmethod, classmethod)) else val
        if inspect.isfunction(func) and func.__module__.startswith("ms_optim"):
            out.append((name, func))
    return out


def _has_params(obj):
    if inspect.isclass(obj) and obj.__init__ is object.__init__:
        return False
    try:
        sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except (TypeError, ValueError):
        return False
    return any(p.name not in ("self", "cls") for p in sig.parameters.values())


def _is_cell(obj):
    return inspect.isclass(obj) and issubclass(obj, nn.Cell)


def _is_optimizer(name, obj):
    return (inspect.isclass(obj) and issubclass(obj, nn.Optimizer)) or name in OPTIMIZER_FACTORIES


def section_problems(name, obj, top_level=True):
    """All violations of the MindSpore docstring layout for one object (empty list: fine)."""
    doc = inspect.getdoc(obj) if not inspect.isclass(obj) else obj.__doc__
    if not doc or not doc.strip():
        return [f"{name}: no docstring"]
    preamble, sections = parse_docstring(doc)
    headers = [h for h, _ in sections]
    problems = []
    text = [ln for ln in preamble if ln.strip()]
    if not text or text[0].lstrip().startswith(("..", ">>>")):
        problems.append(f"{name}: the docstring does not start with a summary sentence")
    unknown = [h for h in headers if h not in ORDER]
    if unknown:
        problems.append(f"{name}: non-MindSpore section header(s) {unknown} (use {ORDER})")
    known = [h for h in headers if h in ORDER]
    if len(set(known)) != len(known):
        problems.append(f"{name}: repeated section header in {known}")
    ranks = [ORDER.index(h) for h in known]
    if ranks != sorted(ranks):
        problems.append(f"{name}: sections {known} are not in MindSpore's order {ORDER}")
    all_lines = inspect.cleandoc(doc).splitlines()
    for i, line in enumerate(all_lines):
        if line.strip().startswith(".. math::") and i + 1 < len(all_lines) \
                and all_lines[i + 1].strip():
            problems.append(f"{name}: '.. math::' is not followed by a blank line")
    if any(ln.strip().startswith(".. math::") for sec in sections for ln in sec[1]):
        problems.append(f"{name}: a '.. math::' block sits inside a section; put the formula "
                        f"before Args")
    short = name.rsplit(".", 1)[-1]
    if top_level and _is_optimizer(short, obj) and not math_blocks(preamble):
        problems.append(f"{name}: an optimizer must state its update as '.. math::' before Args")
    needs_args = _has_params(obj)
    required = []
    if needs_args:
        required.append("Args")
    if top_level:
        if _is_cell(obj) or short in OPTIMIZER_FACTORIES:
            required += ["Inputs", "Outputs"]
        if needs_args:
            required.append("Raises")
        required += ["Supported Platforms", "Examples"]
    for req in required:
        if req not in headers:
            problems.append(f"{name}: missing section '{req}:'")
    args = section(sections, "Args")
    if args is not None and not _entries(args, ARG_RE):
        problems.append(f"{name}: 'Args:' has no 'name (type): text' entries")
    raises = section(sections, "Raises")
    if raises is not None and not _entries(raises, RAISE_RE):
        problems.append(f"{name}: 'Raises:' has no 'ErrorType: If ...' entries")
    platforms = section(sections, "Supported Platforms")
    if platforms is not None:
        body = " ".join(ln.strip() for ln in platforms if ln.strip())
        if not PLATFORMS_RE.match(body):
            problems.append(f"{name}: 'Supported Platforms:' must list ``Ascend`` ``GPU`` "
                            f"``CPU`` names, got {body!r}")
    examples = section(sections, "Examples")
    if examples is not None and not example_lines(examples):
        problems.append(f"{name}: 'Examples:' has no '>>>' lines")
    return problems


# ------------------------------------------------------------------------------------------
# 1. Sections
# ------------------------------------------------------------------------------------------
def test_public_api_is_not_empty():
    assert PUBLIC, "ms_optim.__all__ is empty"
    for name in PUBLIC:
        assert hasattr(ms_optim, name), f"ms_optim.__all__ lists '{name}', which does not exist"


# Words a zh formula may keep: names of arguments, attributes and MindSpore classes.
ZH_MATH_IDENTIFIERS = ("use_clip", "lars_filter", "lars\\_filter", "decay_filter",
                       "enable_clip_grad", "optimizer.global_step", "global_step", "Dense",
                       "Conv2d", "LayerNorm", "Embedding", "Nesterov", "BatchNorm")


def test_zh_formulas_are_in_chinese():
    """Every ``\\text{...}`` of a formula on a Chinese page (API pages and guides): no English
    words besides identifiers."""
    bad = []
    for root, _, files in os.walk(os.path.join(DOCS, "source_zh_cn")):
        for f in files:
            if not f.endswith(".rst"):
                continue
            text = open(os.path.join(root, f), encoding="utf-8").read()
            for words in re.findall(r"\\text\{([^{}]*)\}", text):
                rest = words
                for ident in ZH_MATH_IDENTIFIERS:
                    rest = rest.replace(ident, "")
                if re.search(r"[A-Za-z]{2,}", rest):
                    bad.append(f"{f}: \\text{{{words}}}")
    assert not bad, "English words in zh formulas:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_docstring_sections(name):
    obj = getattr(ms_optim, name)
    problems = section_problems(f"ms_optim.{name}", obj)
    if inspect.isclass(obj):
        for meth_name, meth in _public_methods(obj):
            problems += section_problems(f"ms_optim.{name}.{meth_name}", meth, top_level=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", OPS)
def test_ops_docstring_sections(name):
    """The formula functions: summary, formula before Args, Args, Returns, Examples."""
    obj = getattr(ms_optim.ops, name)
    problems = section_problems(f"ms_optim.ops.{name}", obj, top_level=False)
    preamble, sections = parse_docstring(obj.__doc__)
    if not math_blocks(preamble):
        problems.append(f"ms_optim.ops.{name}: no '.. math::' formula before Args")
    for req in ("Returns", "Supported Platforms", "Examples"):
        if section(sections, req) is None:
            problems.append(f"ms_optim.ops.{name}: missing section '{req}:'")
    assert not problems, "\n".join(problems)


def test_section_checker_catches_bad_docstrings():
    """The checker itself: a misordered, incomplete docstring must be reported."""

    def bad(a, b=1):
        """Summary.

        Raises:
            TypeError: If `a` is bad.

        Args:
            a (int): a.
            b (int): b.

        Examples:
            >>> bad(1)
        """

    def no_platforms(a):
        """Summary.

        Args:
            a (int): a.

        Raises:
            TypeError: If `a` is bad.

        Examples:
            >>> no_platforms(1)
        """

    problems = section_problems("bad", bad)
    assert any("not in MindSpore's order" in p for p in problems), problems
    problems = section_problems("no_platforms", no_platforms)
    assert problems == ["no_platforms: missing section 'Supported Platforms:'"], problems


# ------------------------------------------------------------------------------------------
# 2. English / Chinese parity
# ------------------------------------------------------------------------------------------
ZH_HEADERS = {"参数": "Args", "输入": "Inputs", "输出": "Outputs", "返回": "Returns",
              "异常": "Raises", "支持平台": "Supported Platforms", "样例": "Examples"}


def parse_zh_block(lines, start):
    """Parse the directive starting at ``lines[start]``: {zh header: body lines}, math, examples.

    Only the directive's own level is read (nested ``py:method`` blocks are excluded).
    """
    base = _indent(lines[start])
    i = start + 1
    content = [ln for ln in lines[i:] if ln.strip()]
    level = _indent(content[0]) if content else base + 4
    block = []
    while i < len(lines):
        ln = lines[i]
        if ln.strip() and _indent(ln) <= base:
            break
        if ln.strip() and _indent(ln) == level and ln.strip().startswith(".. py:"):
            break  # a nested method/attribute starts
        block.append(ln)
        i += 1
    sections, current = {}, None
    for ln in block:
        if ln.strip() and _indent(ln) == level:
            head = ln.strip().rstrip("：:")
            if ln.strip().endswith(("：", ":")) and head in ZH_HEADERS:
                current = head
                sections[current] = []
                continue
            if current != "样例" or not ln.strip().startswith((">>>", "...")):
                current = None if current != "样例" else current
        if current is not None:
            sections[current].append(ln)
    return sections, math_blocks(block), [ln.strip() for ln in sections.get("样例", []) if ln.strip()]


ZH_SIG_RE = r"^\s*\.\. py:{kind}:: {name}(\(.*\))\s*$"


def _zh_lines(name):
    path = os.path.join(ZH_API, f"ms_optim.{name}.rst")
    assert os.path.isfile(path), f"missing Chinese page docs/source_zh_cn/api_python/ms_optim.{name}.rst"
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def parity_problems(label, obj, lines, start, sig_text):
    problems = []
    expected = source_signature(obj)
    if sig_text != expected:
        problems.append(f"{label}: zh signature\n    {sig_text}\n  != code\n    {expected}")
    problems += [f"{label}: {p}" for p in check_against_inspect(obj, sig_text)]
    zh, zh_math, zh_examples = parse_zh_block(lines, start)
    doc = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
    preamble, sections = parse_docstring(doc)
    for zh_head, en_head in ZH_HEADERS.items():
        if (zh_head in zh) != (section(sections, en_head) is not None):
            problems.append(f"{label}: English has {en_head}: {section(sections, en_head) is not None}"
                            f", Chinese has {zh_head}： {zh_head in zh}")
    for zh_head, en_head, pattern in (("参数", "Args", ARG_RE), ("异常", "Raises", RAISE_RE)):
        en_n = len(_entries(section(sections, en_head) or [], pattern))
        zh_n = len(_entries(zh.get(zh_head, []), r"^- \*\*"))
        if en_n != zh_n:
            problems.append(f"{label}: {en_n} English {en_head} entries but {zh_n} {zh_head} entries")
    if "参数" in zh:
        en_names = [re.match(r"^\*{0,2}(\w+)", e).group(1)
                    for e in _entries(section(sections, "Args") or [], ARG_RE)]
        zh_names = [re.match(r"^- \*\*(\w+)\*\*", e).group(1) if re.match(r"^- \*\*(\w+)\*\*", e)
                    else e for e in _entries(zh["参数"], r"^- \*\*")]
        if en_names != zh_names:
            problems.append(f"{label}: Args {en_names} != 参数 {zh_names}")
    if "异常" in zh:
        en_types = [e.split(":")[0].strip() for e in _entries(section(sections, "Raises") or [],
                                                               RAISE_RE)]
        zh_types = [re.sub(r"^- \*\*(\w+)\*\*.*$", r"\1", e)
                    for e in _entries(zh["异常"], r"^- \*\*")]
        if en_types != zh_types:
            problems.append(f"{label}: Raises {en_types} != 异常 {zh_types}")
    en_platforms = " ".join(ln.strip() for ln in (section(sections, "Supported Platforms") or [])
                            if ln.strip())
    zh_platforms = " ".join(ln.strip() for ln in zh.get("支持平台", []) if ln.strip())
    if en_platforms != zh_platforms:
        problems.append(f"{label}: platforms {en_platforms!r} != {zh_platforms!r}")
    en_math = math_blocks(inspect.cleandoc(doc).splitlines())
    if [_math_structure(m) for m in en_math] != [_math_structure(m) for m in zh_math]:
        problems.append(f"{label}: the zh page's formulas differ from the docstring's "
                        f"({len(en_math)} vs {len(zh_math)} '.. math::' blocks, or different LaTeX)")
    en_examples = [ln.strip() for ln in section(sections, "Examples") or [] if ln.strip()]
    if en_examples != zh_examples:
        problems.append(f"{label}: 样例 differs from Examples:\n    "
                        + "\n    ".join(f"{a!r} | {b!r}" for a, b in
                                        zip(en_examples + [""] * len(zh_examples),
                                            zh_examples + [""] * len(en_examples))
                                        if a != b)[:2000])
    return problems


@pytest.mark.parametrize("name", PUBLIC_API)
def test_zh_page_parity(name):
    obj = getattr(ms_optim, name)
    lines = _zh_lines(name)
    kind = "class" if inspect.isclass(obj) else "function"
    sig_re = re.compile(ZH_SIG_RE.format(kind=kind, name=re.escape(f"ms_optim.{name}")))
    starts = [(i, m.group(1)) for i, ln in enumerate(lines) if (m := sig_re.match(ln))]
    assert len(starts) == 1, (f"api_python/ms_optim.{name}.rst needs exactly one "
                              f"'.. py:{kind}:: ms_optim.{name}(...)' line on one line")
    start, sig_text = starts[0]
    problems = parity_problems(f"ms_optim.{name}", obj, lines, start, sig_text)
    if inspect.isclass(obj):
        for meth_name, meth in _public_methods(obj):
            if not (meth.__doc__ or "").strip():
                continue
            meth_re = re.compile(rf"^\s*\.\. py:method:: {re.escape(meth_name)}(\(.*\))\s*$")
            found = [(i, m.group(1)) for i, ln in enumerate(lines) if (m := meth_re.match(ln))]
            if len(found) != 1:
                problems.append(f"ms_optim.{name}.{meth_name}: no '.. py:method:: {meth_name}(...)' "
                                f"in the zh page")
                continue
            problems += parity_problems(f"ms_optim.{name}.{meth_name}", meth, lines, *found[0])
        # The other direction: a zh method entry whose method was removed or made private is stale.
        public = {meth_name for meth_name, _ in _public_methods(obj)}
        for ln in lines:
            m = re.match(r"^\s*\.\. py:method:: (\w+)\(", ln)
            if m and m.group(1) not in public:
                problems.append(f"ms_optim.{name}: the zh page documents '{m.group(1)}', which is "
                                f"not a public method of the class (removed or renamed?)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", PUBLIC_DATA)
def test_public_data_documented(name):
    """A public constant: ``#:`` doc comment in the source (what autodata shows), one
    ``.. py:data::`` on its zh page, and both name every key and value it holds."""
    from sphinx.pycode import ModuleAnalyzer
    value = getattr(ms_optim, name)
    docs = ModuleAnalyzer.for_module("ms_optim").find_attr_docs()
    en = " ".join(docs.get(("", name), []))
    assert en.strip(), f"ms_optim.{name}: no '#:' doc comment above its assignment in ms_optim/__init__.py"
    lines = _zh_lines(name)
    assert sum(ln.strip() == f".. py:data:: ms_optim.{name}" for ln in lines) == 1, \
        f"api_python/ms_optim.{name}.rst needs exactly one '.. py:data:: ms_optim.{name}'"
    zh = "\n".join(lines)
    for key, val in dict(value).items():
        for label, text in (("en doc comment", en), ("zh page", zh)):
            assert f"``{key}``" in text or f'"{key}"' in text, f"ms_optim.{name}: {label} does not name {key!r}"
        assert f'"{key}": {val!r}' in zh, f"ms_optim.{name}: zh page does not state {key!r}: {val!r}"


def test_no_stale_zh_pages():
    stale = [f for f in os.listdir(ZH_API) if f.endswith(".rst")
             and f[len("ms_optim."):-len(".rst")] not in PUBLIC]
    assert not stale, f"zh pages for names not in ms_optim.__all__: {stale}"


# ------------------------------------------------------------------------------------------
# 3. Docstring examples run as doctests on CPU
# ------------------------------------------------------------------------------------------
def _doctests(obj, name):
    finder = doctest.DocTestFinder(recurse=inspect.isclass(obj), exclude_empty=True)
    # exclude_empty only drops empty docstrings; keep docstrings that do have examples.
    tests = [t for t in finder.find(obj, name, globs={"__name__": "__doctest__"})
             if t.examples and (not t.name.rsplit(".", 1)[-1].startswith("_") or t.name == name)]
    return sorted(tests, key=lambda t: t.name)


def _run_doctests(obj, name):
    old_mode = ms.get_context("mode")
    tests = _doctests(obj, name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    try:
        for test in tests:
            skipped = [ex.source for ex in test.examples if ex.options.get(doctest.SKIP)]
            for src in skipped:
                assert re.search(r"ascend", src, re.I), (
                    f"{test.name}: '+SKIP' is only allowed on Ascend-only lines, not on {src!r}")
            runner.run(test, out=report.append, clear_globs=True)
    finally:
        ms.set_context(mode=old_mode)
    results = runner.summarize(verbose=False)
    return tests, results, "".join(report)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_docstring_examples_run(name):
    obj = getattr(ms_optim, name)
    tests, results, report = _run_doctests(obj, f"ms_optim.{name}")
    assert any(t.name == f"ms_optim.{name}" for t in tests), f"ms_optim.{name} has no '>>>' example"
    assert results.attempted > 0
    assert results.failed == 0, report


@pytest.mark.parametrize("name", OPS)
def test_ops_examples_run(name):
    tests, results, report = _run_doctests(getattr(ms_optim.ops, name), f"ms_optim.ops.{name}")
    assert tests and results.attempted > 0, f"ms_optim.ops.{name} has no '>>>' example"
    assert results.failed == 0, report


def test_doctest_runner_reports_wrong_output():
    """A wrong expected output must fail: the comparison is real."""

    def wrong():
        """
        >>> 1 + 1
        3
        """

    _, results, report = _run_doctests(wrong, "wrong")
    assert results.failed == 1 and "Expected:\n    3" in report


# Guide pages (quick start, LARS page, ...): their ``>>>`` examples run here too, so that
# ``make test`` catches a broken guide page, not only ``make -C docs doctest``. The English
# pages run; the Chinese pages must carry the very same example lines and outputs.
GUIDE_EN = os.path.join(DOCS, "source_en")
GUIDE_ZH = os.path.join(DOCS, "source_zh_cn")


def _guide_example_lines(path):
    """The examples of a page as (source, expected output) pairs, in order."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    test = doctest.DocTestParser().get_doctest(text, {}, os.path.basename(path), path, 0)
    return [(ex.source, ex.want) for ex in test.examples]


GUIDE_PAGES = sorted(f for f in os.listdir(GUIDE_EN) if f.endswith(".rst")
                     and _guide_example_lines(os.path.join(GUIDE_EN, f)))


def test_guide_pages_with_examples_exist():
    assert "quickstart.rst" in GUIDE_PAGES, GUIDE_PAGES


@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_guide_page_examples_run(page):
    from common_conf import doctest_global_setup  # the setup `make doctest` uses (CPU, seeds)

    path = os.path.join(GUIDE_EN, page)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    old_mode = ms.get_context("mode")
    globs = {"__name__": "__guide__"}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.IGNORE_EXCEPTION_DETAIL
                                   | doctest.DONT_ACCEPT_TRUE_FOR_1)
    report = []
    try:
        exec(doctest_global_setup, globs)  # pylint: disable=exec-used
        test = doctest.DocTestParser().get_doctest(text, globs, page, path, 0)
        assert test.examples, f"{page}: no '>>>' example"
        assert not [ex.source for ex in test.examples if ex.options.get(doctest.SKIP)], \
            f"{page}: '+SKIP' in a guide page"
        runner.run(test, out=report.append, clear_globs=True)
    finally:
        ms.set_context(mode=old_mode)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0, "".join(report)


@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_guide_page_examples_zh_parity(page):
    zh = os.path.join(GUIDE_ZH, page)
    assert os.path.isfile(zh), f"docs/source_en/{page} has no Chinese counterpart"
    en_ex, zh_ex = _guide_example_lines(os.path.join(GUIDE_EN, page)), _guide_example_lines(zh)
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(en_ex + [None] * len(zh_ex),
                                                      zh_ex + [None] * len(en_ex))) if a != b]
    assert not diff, f"{page}: the zh examples differ from the en ones, first: {diff[0]}"


# ------------------------------------------------------------------------------------------
# 4. Sphinx html build of both languages, warnings as errors, no CDN
# ------------------------------------------------------------------------------------------
REMOTE_SCRIPT_RE = re.compile(r"<script[^>]*\ssrc=[\"'](?:https?:)?//", re.I)
CDN_RE = re.compile(r"(?:https?:)?//[^\"'\s>]*(?:mathjax|jsdelivr|cdnjs|unpkg|googleapis|polyfill)",
                    re.I)


@pytest.fixture(scope="module")
def html_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    procs = {}
    env = dict(os.environ, GLOG_v="3", PYTHONWARNINGS="ignore")
    start = time.time()
    for lang in ("en", "zh_cn"):
        out = root / lang
        cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
               "-d", str(root / f"doctrees_{lang}"), os.path.join(DOCS, f"source_{lang}"), str(out)]
        procs[lang] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             env=env, cwd=DOCS))
    results = {}
    for lang, (out, proc) in procs.items():
        log, _ = proc.communicate(timeout=300)
        results[lang] = (out, proc.returncode, log.decode(errors="replace"))
    print(f"sphinx html en + zh_cn (in parallel): {time.time() - start:.1f} s")
    return results


@pytest.mark.parametrize("lang", ["en", "zh_cn"])
def test_sphinx_html_build_offline_math(html_builds, lang):
    out, rc, log = html_builds[lang]
    assert rc == 0, f"sphinx -W failed for {lang}:\n{log[-6000:]}"
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax was not bundled"
    pages = list(out.rglob("*.html"))
    assert pages
    math_pages = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not REMOTE_SCRIPT_RE.search(text), f"{page}: loads a script from a URL"
        cdn = CDN_RE.search(text)
        assert not cdn, f"{page}: references {cdn.group(0)}"
        if 'class="math' in text:
            math_pages += 1
            assert re.search(r'<script[^>]*src="(\.\./)*_static/mathjax/tex-chtml\.js"', text), \
                f"{page}: has formulas but does not load the bundled MathJax"
    assert math_pages >= 2, "no rendered formulas found"
    for js in (out / "_static").glob("*.js"):  # Sphinx's own scripts (the bundle is in mathjax/)
        assert not CDN_RE.search(js.read_text(encoding="utf-8", errors="replace")), js
    api = out / ("api_python" if lang == "zh_cn" else "generated")
    for name in PUBLIC:
        assert (api / f"ms_optim.{name}.html").is_file(), f"no {lang} page for ms_optim.{name}"
