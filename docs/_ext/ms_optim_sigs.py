"""Source-level signatures of ms_optim's public API, shared by the docs build and ``tests/test_docs.py``.

``inspect.signature`` is not usable as written documentation for two reasons:

* every ``mindspore.nn.Cell`` subclass inherits ``Cell.__new__(*args, **kwargs)``, so
  ``inspect.signature(LARS)`` (and Sphinx autodoc, which looks at ``__new__`` first) reports
  ``(*args, **kwargs)``;
* callable defaults print as ``<function LARS.<lambda> at 0x7f...>``, which changes every run.

``source_signature(obj)`` therefore reads the parameters from ``inspect.signature`` of the
constructor (``__init__`` for classes) and writes each default as it is spelt in the source code
(``ast.unparse`` of the default expression), e.g.
``(optimizer, epsilon=1e-05, coefficient=0.001, use_clip=False, lars_filter=lambda x: ...)``.
``check_against_inspect`` verifies that this text and ``inspect.signature`` agree on names, kinds
and (for literal defaults) values, so the documented signature cannot drift from the code.
"""
import ast
import inspect
import textwrap

__all__ = ["callable_for_signature", "source_signature", "parse_signature_text",
           "check_against_inspect"]


def callable_for_signature(obj):
    """The function whose parameters are the public signature of ``obj`` (``__init__`` for classes)."""
    if inspect.isclass(obj):
        return obj.__init__
    return obj


def _inspect_params(obj):
    if inspect.isclass(obj) and obj.__init__ is object.__init__:
        return []  # no constructor of its own: ClassName()
    sig = inspect.signature(callable_for_signature(obj))
    params = list(sig.parameters.values())
    # Classes: drop __init__'s self. Methods taken from a class (plain functions whose
    # qualified name is "Class.method"): drop self/cls as well.
    is_method = inspect.isfunction(obj) and "." in obj.__qualname__.replace(".<locals>.", "")
    if (inspect.isclass(obj) or is_method) and params and params[0].name in ("self", "cls"):
        params = params[1:]
    return params


def _function_def(func):
    """The ``ast.FunctionDef`` of ``func`` (decorators unwrapped), or None if no source exists."""
    func = inspect.unwrap(func)
    try:
        src = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return None
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func.__name__:
            return node
    return None


def _as_lambda(func):
    """``lambda x: expr`` for a function whose body is a single ``return expr``, else None."""
    node = _function_def(func)
    if node is None:
        return None
    body = [n for n in node.body
            if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]  # docstring
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return None
    return ast.unparse(ast.Lambda(args=node.args, body=body[0].value))


def _default_text(default_node, func):
    """Source text of one default. A name bound to a one-expression function defined in the
    same module (e.g. ``lars_filter=_upstream_default_filter``) is shown as the equivalent
    lambda, which is what the docstrings write as the default."""
    if isinstance(default_node, ast.Name):
        target = getattr(inspect.getmodule(inspect.unwrap(func)), default_node.id, None)
        if inspect.isfunction(target) and target.__name__ != "<lambda>":
            as_lambda = _as_lambda(target)
            if as_lambda is not None:
                return as_lambda
        if isinstance(getattr(target, "source_text", None), str):  # a callable default object
            return target.source_text
    return ast.unparse(default_node)


def _source_defaults(func):
    """Map parameter name -> default expression text as written in the source."""
    node = _function_def(func)
    if node is None:
        return {}
    args = node.args
    out = {}
    positional = args.posonlyargs + args.args
    for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
        out[arg.arg] = _default_text(default, func)
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        if default is not None:
            out[arg.arg] = _default_text(default, func)
    return out


def source_signature(obj):
    """``"(a, b=1.0, *, c=lambda x: x.name)"``: the public signature of ``obj`` as written in its source."""
    params = _inspect_params(obj)
    src_defaults = _source_defaults(callable_for_signature(obj))
    parts = []
    star_done = False
    for p in params:
        if p.kind == p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind == p.VAR_POSITIONAL:
            parts.append("*" + p.name)
            star_done = True
            continue
        if p.kind == p.VAR_KEYWORD:
            parts.append("**" + p.name)
            continue
        if p.default is p.empty:
            parts.append(p.name)
        else:
            text = src_defaults.get(p.name, repr(p.default))
            parts.append(f"{p.name}={text}")
        if p.kind == p.POSITIONAL_ONLY and (params.index(p) + 1 == len(params)
                                            or params[params.index(p) + 1].kind != p.POSITIONAL_ONLY):
            parts.append("/")
    return "(" + ", ".join(parts) + ")"


def parse_signature_text(text):
    """Parse ``"(a, b=1.0)"`` into ``[(name, kind, default_text_or_None), ...]`` using Python's grammar."""
    node = ast.parse(f"def _f{text}: pass").body[0].args
    out = []
    positional = node.posonlyargs + node.args
    n_no_default = len(positional) - len(node.defaults)
    for i, arg in enumerate(positional):
        kind = "POSITIONAL_ONLY" if arg in node.posonlyargs else "POSITIONAL_OR_KEYWORD"
        default = None if i < n_no_default else ast.unparse(node.defaults[i - n_no_default])
        out.append((arg.arg, kind, default))
    if node.vararg:
        out.append((node.vararg.arg, "VAR_POSITIONAL", None))
    for arg, default in zip(node.kwonlyargs, node.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", None if default is None else ast.unparse(default)))
    if node.kwarg:
        out.append((node.kwarg.arg, "VAR_KEYWORD", None))
    return out


def check_against_inspect(obj, text):
    """Return a list of differences between signature text ``text`` and ``inspect.signature(obj)``."""
    problems = []
    try:
        documented = parse_signature_text(text)
    except SyntaxError as exc:
        return [f"signature text {text!r} is not valid Python: {exc}"]
    actual = _inspect_params(obj)
    if [d[0] for d in documented] != [p.name for p in actual]:
        return [f"parameter names {[d[0] for d in documented]} != {[p.name for p in actual]}"]
    for (name, kind, default), p in zip(documented, actual):
        if kind != p.kind.name:
            problems.append(f"'{name}': kind {kind} != {p.kind.name}")
        if (default is None) != (p.default is p.empty):
            problems.append(f"'{name}': documented default {default!r}, actual "
                            f"{'none' if p.default is p.empty else repr(p.default)}")
            continue
        if default is None:
            continue
        try:
            value = ast.literal_eval(default)
        except (ValueError, SyntaxError):
            # Not a literal (lambda, name, call): it must be the source text of the default.
            src = _source_defaults(callable_for_signature(obj)).get(name)
            if src != default:
                problems.append(f"'{name}': documented default {default!r} != source {src!r}")
            continue
        if type(value) is not type(p.default) or value != p.default:
            problems.append(f"'{name}': documented default {default!r} != actual {p.default!r}")
    return problems
