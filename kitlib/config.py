"""Stage configs: each notebook's parameters cell is the one typed declaration of its stage.

A notebook (``notebooks/10_train.py`` ...) opens with a papermill ``parameters`` cell of annotated literals::

    exp: str = "demo"  # artifacts/<exp>/
    epochs: Optional[int] = None  # None: the recipe's

The next cell turns that namespace into the stage's config object, ``TrainConfig.from_params(globals())``
(``kitlib.stages``), which

- takes the parameter names and types from the cell's annotations (``__annotations__``), never from a list kept
  elsewhere, so a new parameter is one new line in the cell;
- checks every value against its annotation: ``epochs: Optional[int]`` takes an int or None, not ``"3"``, ``2.7``
  or True; ``bool`` takes True/False, not ``"false"`` or 0; a ``float`` takes an int (as a float). A wrong value
  fails with ``ParameterError`` naming the parameter, the value and the expected type;
- refuses a name papermill injected that the cell does not declare (papermill only warns "Passed unknown
  parameter"), naming close matches, and a declared parameter without a value (``exp: str`` with nothing
  injected);
- saves the whole object as the artifact folder's ``config.json`` (``StageConfig.save``): ``{"stage", "params",
  "types", ...provenance, "run"}``. ``StageConfig.load`` rebuilds the object from that file alone (the types travel
  with it), so a stage reruns from it (``python -m kitlib.train fold<k>/config.json``, or papermill with
  ``-f`` on its ``params``) and inference reads a fold's training config without the notebook.

Annotations use ``Optional[X]`` rather than ``X | None``: papermill's parameter parser (a regular expression) does not
read ``|`` and would warn "Passed unknown parameter" for every such name. The types understood are ``kitlib.params``'.

Outside a notebook, ``StageConfig.from_notebook(**overrides)`` builds a config from the notebook's defaults, read as
text by ``kitlib.params.read_declaration`` (nothing is imported or run); ``kitlib.params`` also checks the values and
writes each notebook the typed parameters it declares for ``run_all.sh``.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import types as _types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from kitlib.io import project_path, read_json, remove_stale_temp, root_relative, run_info, write_json
from kitlib.params import Parameter, ParameterError, canonical_type, check_value, read_declaration

__all__ = ["StageConfig"]

#: The first line of the cell papermill injects (``PythonTranslator.codify(..., comment="Parameters")``).
_INJECTED_HEADER = "# Parameters"
_NAMESPACE_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})  # IPython's own globals


def _injected_names(namespace: Mapping[str, Any]) -> set[str]:
    """Names papermill injected into a notebook kernel: the assignments of the last executed cell that starts with
    papermill's ``# Parameters`` header (IPython keeps each executed cell's source in ``In``). Outside IPython (a
    plain mapping) every public name that holds data counts."""
    history = namespace.get("In")
    if isinstance(history, list):
        for source in reversed(history):
            if isinstance(source, str) and source.lstrip().startswith(_INJECTED_HEADER):
                try:
                    tree = ast.parse(source)
                except SyntaxError:
                    return set()
                return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                        if isinstance(t, ast.Name)}  # fmt: skip
        return set()
    return {
        k for k, v in namespace.items()
        if not k.startswith("_") and k not in _NAMESPACE_NAMES
        and not isinstance(v, (_types.ModuleType, type, _types.FunctionType, _types.BuiltinFunctionType))
    }  # fmt: skip


class StageConfig:
    """The parameters of one stage, type-checked against its declaration, frozen, saved as ``config.json``.

    Values are read as attributes (``cfg.epochs``). A subclass per stage (``kitlib.stages``) names its notebook and
    its artifact, resolves what needs resolving once (``_resolve``: the preset name becomes ``cfg.preset``, a
    ``Preset``; the training recipe fills the ``None`` parameters) and adds derived properties (``cfg.fold_dir``).

    Class attributes:
        stage: the notebook's stem ("10_train"); notebook: its path from the repository root.
    """

    stage: ClassVar[str] = ""
    notebook: ClassVar[str] = ""
    #: Path parameters that ``save`` writes relative to the project root when they lie under it (``project_path``
    #: resolves them again); only parameters outside a run's fingerprint, so a reloaded config keeps its run id.
    RELATIVE_PATHS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, values: Mapping[str, Any], types: Mapping[str, str], extra: Mapping[str, Any] | None = None):
        """Check ``values`` against ``types`` (name -> annotation text) and resolve; see ``from_params``.

        Raises:
            ParameterError: an unknown, missing or wrongly typed value.
        """
        types = {name: canonical_type(t) for name, t in types.items()}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ParameterError(self._unknown_message(unknown, values, types))
        missing = sorted(name for name in types if name not in values)
        if missing:
            shown = ", ".join(f"{name}: {types[name]}" for name in missing)
            raise ParameterError(f"{self._where()}: missing required parameter(s) {shown}")
        errors, checked = [], {}
        for name, type_text in types.items():
            try:
                checked[name] = check_value(name, values[name], type_text)
            except ParameterError as e:
                errors.append(str(e))
        if errors:
            raise ParameterError(f"{self._where()}: " + "; ".join(errors))
        object.__setattr__(self, "_values", checked)
        object.__setattr__(self, "_types", types)
        object.__setattr__(self, "_extra", dict(extra or {}))
        object.__setattr__(self, "_resolved", {})
        self._resolve()

    # -- construction

    @classmethod
    def from_params(cls, namespace: Mapping[str, Any]) -> StageConfig:
        """The stage's config from a notebook's namespace (``globals()`` after the parameters cell).

        The declaration is the namespace's ``__annotations__`` (the parameters cell's); the values are the
        namespace's, as papermill injected them.

        Raises:
            ParameterError: a name papermill injected that the cell does not declare (close matches named), a
                declared name without a value, or a value of the wrong type (name, value and type named).
        """
        annotations = dict(namespace.get("__annotations__", {}))
        if not annotations:
            raise ParameterError(f"{cls._where()}: no annotated parameters in the namespace; call "
                                 f"{cls.__name__}.from_params(globals()) after the parameters cell")  # fmt: skip
        types = {name: canonical_type(a) for name, a in annotations.items()}
        values = {name: namespace[name] for name in types if name in namespace}
        unknown = sorted(_injected_names(namespace) - set(types))
        if unknown:
            raise ParameterError(cls._unknown_message(unknown, namespace, types))
        return cls(values, types)

    @classmethod
    def declaration(cls) -> dict[str, Parameter]:
        """The stage's notebook's parameters cell (``read_declaration``)."""
        return read_declaration(cls.notebook)

    @classmethod
    def from_notebook(cls, **overrides: Any) -> StageConfig:
        """The config of the notebook's defaults with ``overrides`` on top, as papermill would inject them: for tests,
        scripts and the command line (the notebook file must be there; inside a notebook use ``from_params``).

        Raises:
            FileNotFoundError: the notebook is not in this checkout. ParameterError: as ``from_params``.
        """
        params = cls.declaration()
        unknown = sorted(set(overrides) - set(params))
        types = {p.name: p.type for p in params.values()}
        if unknown:
            raise ParameterError(cls._unknown_message(unknown, overrides, types))
        values = {p.name: p.default for p in params.values() if not p.required}
        values.update(overrides)
        return cls(values, types)

    @classmethod
    def load(cls, path: str | os.PathLike) -> StageConfig:
        """Rebuild the config saved by ``save`` from the file alone (its ``types`` travel with it). Parameters the
        stage's notebook declares and the file lacks (a config written by an older kit) take their declared defaults
        when the notebook is in this checkout.

        Raises:
            FileNotFoundError: no such file. ValueError: not a config of this stage (the message names the file).
            ParameterError: a value that does not fit its type.
        """
        path = Path(path)
        data = read_json(path)
        if not isinstance(data, dict) or "params" not in data or "types" not in data:
            raise ValueError(f"{path}: not a stage config (needs 'params' and 'types'; written by StageConfig.save)")
        if cls.stage and data.get("stage") != cls.stage:
            raise ValueError(f"{path}: a config of stage {data.get('stage')!r}, not {cls.stage!r}")
        extra = {k: v for k, v in data.items() if k not in ("stage", "params", "types", "run")}
        params, types = dict(data["params"]), dict(data["types"])
        if cls.notebook and project_path(cls.notebook).is_file():  # a config of an older kit: the new parameters'
            for p in cls.declaration().values():  # defaults (None: the recipe's value, as when it was trained)
                if p.name not in types and not p.required:
                    params[p.name], types[p.name] = p.default, p.type
        try:
            return cls(params, types, extra)
        except ParameterError as e:
            raise ParameterError(f"{path}: {e}") from None

    def replace(self, **changes: Any) -> StageConfig:
        """A copy with some parameters changed, checked and resolved again.

        Raises:
            ParameterError: as ``from_params``.
        """
        unknown = sorted(set(changes) - set(self._types))
        if unknown:
            raise ParameterError(self._unknown_message(unknown, changes, self._types))
        return type(self)({**self._values, **changes}, self._types, self._extra)

    # -- access

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        resolved = self.__dict__.get("_resolved", {})
        if name in resolved:
            return resolved[name]
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no parameter {name!r}; parameters: {sorted(values)}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: use .replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values == other._values and self._types == other._types

    def __hash__(self) -> int:
        return hash(json.dumps(self._values, sort_keys=True, default=str))

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({body})"

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._values, *self._resolved})

    @property
    def types(self) -> dict[str, str]:
        """name -> annotation text, the stage's declaration."""
        return dict(self._types)

    @property
    def extra(self) -> dict[str, Any]:
        """What ``load`` read besides the parameters (provenance such as ``run_id``)."""
        return dict(self._extra)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain values (what ``config.json`` holds under ``params``)."""
        return json.loads(json.dumps(self._values, default=str))

    def save(self, path: str | os.PathLike | None = None, **extra: Any) -> Path:
        """Write ``{"stage", "params", "types", **extra, "run": kitlib.io.run_info()}`` atomically.

        Args:
            path: default the stage's ``config_path`` (e.g. ``artifacts/<exp>/oof_config.json``).
            **extra: provenance saved beside the parameters (``run_id``, ``recipe_source``); ``load`` keeps it in
                ``extra``.
        Returns:
            The path written.

        Saving is where a stage starts: the temporary files that killed writes left in the config's folder (and one
        level below) are removed first (``kitlib.io.remove_stale_temp``: the kit's names of dead processes only).
        """
        path = path if path is not None else self.config_path
        remove_stale_temp(Path(path).parent)
        params = self.to_dict()
        for name in self.RELATIVE_PATHS:  # under the project root: relative, so the file reads the same elsewhere
            if isinstance(params.get(name), str):
                params[name] = root_relative(params[name])
        body = {"stage": self.stage, "params": params, "types": self.types, **extra, "run": run_info()}
        return write_json(path, body)

    # -- subclass hooks

    def _resolve(self) -> None:
        """Compute resolved attributes once (subclasses): ``self._set_resolved(name=value)``."""

    def _set_resolved(self, **values: Any) -> None:
        self._resolved.update(values)

    def _set_values(self, **values: Any) -> None:
        """Replace parameter values while resolving (checked against their types)."""
        for name, value in values.items():
            self._values[name] = check_value(name, value, self._types[name], self._where())

    @classmethod
    def _where(cls) -> str:
        return f"{cls.stage or cls.__name__}"

    @classmethod
    def _unknown_message(cls, unknown: list[str], values: Mapping[str, Any], types: Mapping[str, str]) -> str:
        parts = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(types), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            parts.append(f"{name!r} = {values.get(name)!r}{hint}")
        return (f"{cls._where()}: unknown parameter(s) {'; '.join(parts)}: not declared in the parameters cell; "
                f"parameters: {', '.join(types)}")  # fmt: skip
