"""Typed notebook parameters: a notebook's ``parameters`` cell read as a declaration, values checked against their
annotations, and command-line text turned into values of the declared type.

- ``read_declaration(notebook)``: the annotated assignments of a jupytext ``.py`` (or ``.ipynb``) parameters cell, read
  with ``ast`` (nothing is imported or run): name, type, default, comment (``Parameter``).
- ``canonical_type`` / ``check_value``: the types understood are ``str``, ``int``, ``float``, ``bool``, ``dict``,
  ``list``, ``Any``, ``Optional[X]``, ``Union[...]``, ``X | Y``, ``list[X]``, ``dict[K, V]`` and ``tuple[...]``. An
  ``int`` is not a ``bool`` nor the string "3"; a ``float`` takes an int (kept as a float); a ``bool`` takes only
  True/False. A wrong value raises ``ParameterError`` naming the parameter, the value and the type.
- ``coerce_text``: a command-line string as a value of a declared type (a ``str`` stays text, so an experiment named
  "001" stays "001", where papermill's ``-p`` would make it the int 1).
- ``python -m kitlib.params params NOTEBOOK --set NAME VALUE --file F.yaml``: the typed YAML that ``run_all.sh`` passes
  to papermill with ``-f``: each notebook gets the parameters it declares; a name that no notebook declares is an
  error.

The config objects built from these declarations are ``kitlib.config.StageConfig`` (the mechanism) and
``kitlib.stages`` (one per notebook).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io as _stdio
import json
import os
import sys
import tokenize
import types as _types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kitlib.io import project_path

__all__ = [
    "MISSING",
    "Parameter",
    "ParameterError",
    "canonical_type",
    "check_value",
    "coerce_text",
    "declaration_from_source",
    "notebook_parameters",
    "read_declaration",
]

#: The default of a parameter declared without a value (``exp: str``): it must be given.
MISSING = object()


class ParameterError(TypeError):
    """A stage parameter that is unknown, missing or of the wrong type; the message names it, its value and the
    expected type."""


@dataclass(frozen=True)
class Parameter:
    """One declared parameter of a stage.

    Attributes:
        name: the variable name.
        type: its annotation in canonical form (``canonical_type``), e.g. ``"Optional[int]"``.
        default: the literal value of the cell, or ``MISSING``.
        comment: the line's trailing comment (what the parameter means).
    """

    name: str
    type: str
    default: Any = MISSING
    comment: str = ""

    @property
    def required(self) -> bool:
        return self.default is MISSING


# ------------------------------------------------------------------------------------------------------ types


@dataclass(frozen=True)
class _Type:
    """A parsed annotation: ``kind`` is a base name ("int", "list", ...) or "union"; ``args`` its parameters."""

    kind: str
    args: tuple[_Type, ...] = ()

    def __str__(self) -> str:
        if self.kind == "union":
            rest = [a for a in self.args if a.kind != "None"]
            if len(rest) == 1 and len(rest) < len(self.args):
                return f"Optional[{rest[0]}]"
            return f"Union[{', '.join(map(str, self.args))}]"
        if self.kind == "ellipsis":
            return "..."
        return f"{self.kind}[{', '.join(map(str, self.args))}]" if self.args else self.kind


_BASES = {"str", "int", "float", "bool", "None", "dict", "list", "tuple", "Any"}


def _parse_node(node: ast.expr, text: str) -> _Type:
    if isinstance(node, ast.Constant) and node.value is None:
        return _Type("None")
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return _Type("ellipsis")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        return _parse(node.value)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "typing":
        node = ast.Name(node.attr)
    if isinstance(node, ast.Name):
        name = {"NoneType": "None", "Dict": "dict", "List": "list", "Tuple": "tuple"}.get(node.id, node.id)
        if name not in _BASES:
            raise ValueError(f"annotation {text!r}: type {node.id!r} is not one of {sorted(_BASES)}")
        return _Type(name)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_parse_node(node.left, text), _parse_node(node.right, text)])
    if isinstance(node, ast.Subscript):
        base = node.value
        if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "typing":
            base = ast.Name(base.attr)
        name = base.id if isinstance(base, ast.Name) else ""
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        args = [_parse_node(item, text) for item in items]
        if name == "Optional":
            return _union([*args, _Type("None")])
        if name == "Union":
            return _union(args)
        name = {"Dict": "dict", "List": "list", "Tuple": "tuple"}.get(name, name)
        if name in ("list", "dict", "tuple"):
            return _Type(name, tuple(args))
    raise ValueError(f"annotation {text!r} is not understood; use str, int, float, bool, dict, list, Optional[...]")


def _union(members: Iterable[_Type]) -> _Type:
    flat: list[_Type] = []
    for m in members:
        for part in m.args if m.kind == "union" else (m,):
            if part not in flat:
                flat.append(part)
    none = [m for m in flat if m.kind == "None"]
    flat = [m for m in flat if m.kind != "None"] + none  # None last: "Optional[X]"
    return flat[0] if len(flat) == 1 else _Type("union", tuple(flat))


@lru_cache(maxsize=512)
def _parse(text: str) -> _Type:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"annotation {text!r} is not a type: {e.msg}") from None
    return _parse_node(tree.body, text)


def canonical_type(annotation: Any) -> str:
    """An annotation (a type object, a ``typing`` form, or its text) as canonical text: ``int | None`` and
    ``typing.Optional[int]`` both give ``"Optional[int]"``.

    Raises:
        ValueError: a type this module does not check (the message lists the ones it does).
    """
    if isinstance(annotation, str):
        text = annotation
    elif annotation is None or annotation is type(None):
        text = "None"
    elif isinstance(annotation, type) and not isinstance(annotation, _types.GenericAlias):
        text = annotation.__name__
    else:
        text = repr(annotation).replace("typing.", "")
    return str(_parse(text))


def _matches(value: Any, t: _Type) -> tuple[bool, Any]:
    """(whether ``value`` is of type ``t``, the value as kept: ints as floats for float, tuples as lists)."""
    kind = t.kind
    if kind == "Any":
        return True, value
    if kind == "None":
        return value is None, value
    if kind == "union":
        for member in t.args:
            ok, out = _matches(value, member)
            if ok:
                return True, out
        return False, value
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if kind == "str":
        return isinstance(value, str), value
    if kind in ("list", "tuple"):
        if not isinstance(value, (list, tuple)):
            return False, value
        if not t.args:
            return True, list(value)
        item_types = [t.args[0]] * len(value) if kind == "list" or t.args[-1].kind == "ellipsis" else list(t.args)
        if len(item_types) != len(value):
            return False, value
        out = []
        for item, item_type in zip(value, item_types, strict=True):
            ok, kept = _matches(item, item_type)
            if not ok:
                return False, value
            out.append(kept)
        return True, out
    if kind == "dict":
        if not isinstance(value, Mapping):
            return False, value
        if not t.args:
            return True, dict(value)
        out = {}
        for k, v in value.items():
            ok_k, k = _matches(k, t.args[0])
            ok_v, v = _matches(v, t.args[1])
            if not (ok_k and ok_v):
                return False, value
            out[k] = v
        return True, out
    raise AssertionError(f"unhandled type {t}")  # _parse admits no other kind


def check_value(name: str, value: Any, type_text: str, where: str = "") -> Any:
    """``value`` checked against the annotation ``type_text``.

    Returns:
        The value as kept: an int for a ``float`` parameter becomes a float, a tuple for a list a list.
    Raises:
        ParameterError: the value is not of the type (the message names ``where``, the parameter, the value and the
            type; a string that would parse as the type says so: ``-p epochs "3"`` is the string "3").
    """
    ok, kept = _matches(value, _parse(type_text))
    if ok:
        return kept
    hint = ""
    if isinstance(value, str):
        try:
            parsed = coerce_text(name, value, type_text)
        except ParameterError:
            parsed = value
        if parsed is not value and parsed != value:
            hint = f" (it is a string; pass {parsed!r} without quotes)"
    prefix = f"{where}: " if where else ""
    raise ParameterError(
        f"{prefix}parameter {name!r} = {value!r} ({type(value).__name__}) is not {canonical_type(type_text)}{hint}"
    )


def coerce_text(name: str, text: str, type_text: str) -> Any:
    """A command-line string as a value of the annotation ``type_text`` (``run_all.sh``, ``kitlib.kaggle_kernel``).

    ``str`` keeps the text as it is (an experiment called "001" stays "001"); ``None``/``none``/``null`` is None
    where the type allows it; ``true``/``false`` (any case) for bool; int and float by Python's rules; lists and
    dicts as YAML/JSON (``[16, 8]``, ``{"a": 1}``).

    Raises:
        ParameterError: the text is not a value of the type (the message names the parameter).
    """
    t = _parse(type_text)
    members = t.args if t.kind == "union" else (t,)
    kinds = [m.kind for m in members]
    if "str" in kinds:
        return text
    if "None" in kinds and text.strip().lower() in ("none", "null", "~", ""):
        return None
    for m in members:
        try:
            if m.kind == "bool" and text.strip().lower() in ("true", "false"):
                return text.strip().lower() == "true"
            if m.kind == "int":
                return int(text)
            if m.kind == "float":
                return float(text)
            if m.kind in ("list", "dict", "tuple", "Any"):
                import yaml

                value = yaml.safe_load(text)
                ok, kept = _matches(value, m)
                if ok:
                    return kept
        except ValueError:
            continue
        except Exception:  # yaml's errors
            continue
    raise ParameterError(f"parameter {name!r}: {text!r} is not {t}")


# ------------------------------------------------------------------------------------------------ declarations


def _cell_source(notebook: Path) -> str:
    """The source of the cell tagged ``parameters``: a jupytext percent ``.py`` or an ``.ipynb``."""
    if notebook.suffix == ".ipynb":
        nb = json.loads(notebook.read_text(encoding="utf-8"))
        for cell in nb.get("cells", []):
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                source = cell.get("source", "")
                return "".join(source) if isinstance(source, list) else source
        raise ValueError(f"{notebook}: no cell tagged 'parameters'")
    lines = notebook.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# %%") and "parameters" in line), None)
    if start is None:
        raise ValueError(f"{notebook}: no '# %% tags=[\"parameters\"]' cell")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# %%")), len(lines))
    return "\n".join(lines[start + 1 : end]) + "\n"


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(_stdio.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def declaration_from_source(source: str, where: str = "parameters cell") -> dict[str, Parameter]:
    """The parameters of a parameters cell's source: every annotated assignment at the top level.

    Raises:
        ValueError: a syntax error, an annotation that is not understood, a default that is not a literal or not of
            its annotation (the message names the line).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{where}: line {e.lineno}: {e.msg}") from None
    comments = _comments(source)
    params: dict[str, Parameter] = {}
    for node in tree.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        type_text = canonical_type(ast.unparse(node.annotation))
        default: Any = MISSING
        if node.value is not None:
            try:
                default = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(f"{where}: line {node.lineno}: the default of {name!r} must be a literal") from None
            default = check_value(name, default, type_text, where)
        params[name] = Parameter(name, type_text, default, comments.get(node.end_lineno or node.lineno, ""))
    return params


def read_declaration(notebook: str | os.PathLike) -> dict[str, Parameter]:
    """The parameters a notebook declares in its ``parameters`` cell, read with ``ast`` (nothing is run).

    Args:
        notebook: a jupytext percent ``.py`` (``notebooks/10_train.py``) or an ``.ipynb``; relative paths are taken
            from the repository root.
    Returns:
        name -> ``Parameter``, in the cell's order.
    Raises:
        FileNotFoundError: no such notebook. ValueError: no parameters cell, or a line that is not understood.
    """
    path = project_path(notebook)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such notebook")
    return declaration_from_source(_cell_source(path), str(path))


# ------------------------------------------------------------------------------------------------ command line


def notebook_parameters(
    notebook: str | os.PathLike, given: Mapping[str, str], files: Iterable[str | os.PathLike] = ()
) -> dict[str, Any]:
    """The typed parameters to pass a notebook: ``given`` (name -> text, e.g. run_all's ``--exp``) and the YAML
    ``files`` (typed values), each kept only when the notebook declares it.

    A name of a YAML file that no notebook in the same folder declares is an error (a typo such as ``epoch``), with
    close matches; one that another notebook declares is left out silently (``epochs`` is 10_train's, not 00_eda's).

    Raises:
        ParameterError: an unknown name, or a value that is not of its parameter's type.
        FileNotFoundError: a notebook or file that does not exist.
    """
    import yaml

    params = read_declaration(notebook)
    folder = project_path(notebook).parent
    every = {name for nb in sorted(folder.glob("[0-9][0-9]_*.py")) for name in read_declaration(nb)}
    out: dict[str, Any] = {}
    for file in files:
        data = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ParameterError(f"{file}: expected a mapping of parameter names to values")
        for name, value in data.items():
            if name not in every:
                close = difflib.get_close_matches(str(name), sorted(every), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ParameterError(f"{file}: unknown parameter {name!r}: no notebook declares it{hint}")
            if name in params:
                out[name] = check_value(name, value, params[name].type, str(file))
    for name, text in given.items():
        if name in params:
            out[name] = coerce_text(name, text, params[name].type)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m kitlib.params params NOTEBOOK [--file F.yaml] [--set NAME VALUE ...]``: print the notebook's
    typed parameters as YAML for ``papermill -f`` (``run_all.sh``); errors print one ``error:`` line, status 2."""
    import yaml

    parser = argparse.ArgumentParser(prog="python -m kitlib.params", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="typed YAML parameters for one notebook")
    p.add_argument("notebook")
    p.add_argument("--file", action="append", default=[], help="a YAML file of parameters (repeatable)")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = parser.parse_args(argv)
    try:
        values = notebook_parameters(args.notebook, dict(args.set), args.file)
    except (ParameterError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(values, sort_keys=False, default_flow_style=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
