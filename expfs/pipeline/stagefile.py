"""Load a stage file (`dvc.yaml`) into typed stages.

The steps follow DVC 3.x: check each stage's fields, build the template
context (`params.yaml`, then the top-level `vars`), expand `foreach` and
`matrix`, then for each stage bind `item`/`key`, template `wdir`, add the
stage's own `vars` (files relative to its `wdir`) and template the other
fields. Every error names the file and line, the stage and the value.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expfs.pipeline import expand
from expfs.pipeline.errors import (
    ParamsError,
    PathOutsideWorkspace,
    StageFileError,
)
from expfs.pipeline.loader import DocPath, LoadedYaml, load_yaml_file
from expfs.pipeline.params import (
    DEFAULT_PARAMS_FILE,
    MissingKey,
    lookup,
    parse_key,
    read_params,
)
from expfs.pipeline.paths import is_within, workspace_path
from expfs.pipeline.stage import (
    FOREACH_FIELDS,
    MATRIX_FIELD,
    OUT_FLAGS,
    OUT_KINDS,
    PLOT_FLAGS,
    STAGE_FIELDS,
    Dep,
    Out,
    OutKind,
    ParamsDep,
    Stage,
)
from expfs.pipeline.template import (
    BadValue,
    Context,
    Redefinition,
    Unresolved,
    render,
    template_error,
)

STAGE_FILE = "dvc.yaml"
TOP_LEVEL_FIELDS = (
    "stages",
    "vars",
    "params",
    "metrics",
    "plots",
    "artifacts",
    "datasets",
)
# DVC reserves these characters: `@` joins generated names, `:` separates a
# stage file from a stage name in addresses such as `dvc.yaml:train`.
INVALID_NAME_CHARS = frozenset("@:/\\${} \t\n")


@dataclass(frozen=True)
class Pipeline:
    """The stages of one stage file and its top-level sections."""

    path: Path
    root: Path
    stages: Mapping[str, Stage]
    params_files: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[Any, ...] = field(default=(), hash=False)


def load_pipeline(
    path: Path | str = STAGE_FILE,
    root: Path | str | None = None,
    *,
    check_graph: bool = True,
) -> Pipeline:
    """Read and template the stage file at `path` in the workspace `root`.

    `root` defaults to the stage file's folder. With `check_graph`, the
    stages must also form a valid DAG (see `expfs.pipeline.dag`).
    """
    stage_file = Path(path)
    workspace = Path(root) if root is not None else stage_file.parent
    loaded = load_yaml_file(stage_file)
    base_dir = _pipeline_dir(stage_file, workspace)
    pipeline = _Builder(loaded, workspace, base_dir).build()
    if check_graph:
        from expfs.pipeline.dag import build_dag

        build_dag(pipeline.stages.values(), stage_file=str(stage_file))
    return pipeline


# Folders that hold Git's and the tools' own state, at any depth.
RESERVED_FOLDERS = (".git", ".expfs", ".dvc")
# Files beside the stage file that the tools read and write.
RESERVED_FILES = ("dvc.yaml", "dvc.lock", "expfs.lock")


def reserved_reason(location: str, base_dir: str) -> str | None:
    """Say why workspace path `location` cannot be an output, or return None.

    Outputs are removed before their stage runs, so an output that is or
    contains Git's folder, the store, or the stage and lock files would
    delete them.
    """
    parts = location.split("/")
    for name in RESERVED_FOLDERS:
        if name in parts:
            return (
                f"'{name}' or a path inside it, which holds the state of Git or a tool"
            )
    for name in RESERVED_FILES:
        beside = posixpath.normpath(posixpath.join(base_dir or ".", name))
        if is_within(beside, location):
            return f"'{beside}' or a folder that contains it, a stage or lock file"
    return None


def _pipeline_dir(stage_file: Path, workspace: Path) -> str:
    try:
        relative = stage_file.parent.resolve().relative_to(workspace.resolve())
    except ValueError:
        raise StageFileError(
            f"{stage_file}: the stage file is outside the workspace '{workspace}'"
        ) from None
    return relative.as_posix()


class _Builder:
    def __init__(self, loaded: LoadedYaml, root: Path, base_dir: str) -> None:
        self.loaded = loaded
        self.root = root
        self.base_dir = base_dir
        self.merged_files: set[str] = set()

    def where(self, doc_path: DocPath) -> str:
        return self.loaded.where(doc_path)

    def build(self) -> Pipeline:
        data = self.loaded.data
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise StageFileError(
                f"{self.where(())}: a stage file must be a mapping with a "
                f"'stages' key, not a {type(data).__name__}"
            )
        unknown = [key for key in data if key not in TOP_LEVEL_FIELDS]
        if unknown:
            raise StageFileError(
                f"{self.where((str(unknown[0]),))}: unknown top-level field "
                f"'{unknown[0]}'; valid fields are {', '.join(TOP_LEVEL_FIELDS)}"
            )
        context = self.base_context(data.get("vars"))
        stages = self.build_stages(data.get("stages"), context)
        return Pipeline(
            path=self.loaded.path,
            root=self.root,
            stages=stages,
            params_files=tuple(self.string_list(data, "params")),
            metrics=tuple(self.string_list(data, "metrics")),
            plots=tuple(self.list_field(data, ("plots",))),
        )

    # Context

    def base_context(self, top_vars: Any) -> Context:
        context = Context()
        default = workspace_path(self.base_dir, DEFAULT_PARAMS_FILE)
        assert default is not None
        if (self.root / default).is_file():
            values = read_params(self.root / default)
            context.merge(values, DEFAULT_PARAMS_FILE, default)
            self.merged_files.add(default)
        self.merge_vars(context, top_vars, ("vars",), self.base_dir, "")
        return context

    def merge_vars(
        self,
        context: Context,
        entries: Any,
        doc_path: DocPath,
        base_dir: str,
        label_prefix: str,
    ) -> None:
        if entries is None:
            return
        if not isinstance(entries, list):
            raise StageFileError(
                f"{self.where(doc_path)}: vars must be a list of mappings and "
                f"file names, not {type(entries).__name__}"
            )
        for index, entry in enumerate(entries):
            where = self.where((*doc_path, index))
            try:
                if isinstance(entry, dict):
                    context.merge(entry, f"{label_prefix}vars[{index}]", None)
                elif isinstance(entry, str):
                    self.merge_vars_file(context, entry, base_dir, where)
                else:
                    raise StageFileError(
                        f"{where}: a vars entry must be a mapping or a file name "
                        f"such as params.json or params.yaml:train, not {entry!r}"
                    )
            except Redefinition as exc:
                raise StageFileError(
                    f"{where}: cannot redefine '{exc.key}' from '{exc.source}': "
                    f"it is already defined in '{exc.earlier}'; rename one of them"
                ) from None

    def merge_vars_file(
        self, context: Context, entry: str, base_dir: str, where: str
    ) -> None:
        name, _, key_list = entry.partition(":")
        path = workspace_path(base_dir, name)
        if path is None:
            raise PathOutsideWorkspace(
                f"{where}: vars file '{name}' is absolute or leaves the "
                "workspace; use a path inside it"
            )
        if not key_list and path in self.merged_files:
            return
        try:
            values = read_params(self.root / path)
        except ParamsError as exc:
            raise ParamsError(f"{where}: vars: {exc.message}") from None
        if key_list:
            values = self.select_keys(values, key_list, name, where)
        else:
            self.merged_files.add(path)
        context.merge(values, name, path)

    def select_keys(
        self, values: dict[str, Any], key_list: str, name: str, where: str
    ) -> dict[str, Any]:
        selected: dict[str, Any] = {}
        for key in (part.strip() for part in key_list.split(",")):
            try:
                parts = parse_key(key)
                value = lookup(values, parts)
            except (ValueError, MissingKey):
                raise ParamsError(
                    f"{where}: vars: key '{key}' not found in '{name}'; fix the "
                    "key or add it to the file"
                ) from None
            node = selected
            for part in parts[:-1]:
                node = node.setdefault(str(part), {})
            node[str(parts[-1])] = value
        return selected

    # Stages

    def build_stages(self, raw: Any, context: Context) -> dict[str, Stage]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise StageFileError(
                f"{self.where(('stages',))}: 'stages' must map stage names to "
                f"definitions, not be a {type(raw).__name__}"
            )
        stages: dict[str, Stage] = {}
        for name, definition in raw.items():
            for instance in self.instances(str(name), definition, context):
                if instance.name in stages:
                    raise StageFileError(
                        f"{self.where(instance.doc_path)}: stage "
                        f"'{instance.name}' is defined twice; rename one of them"
                    )
                stages[instance.name] = self.build_stage(instance, context)
        return stages

    def instances(
        self, name: str, definition: Any, context: Context
    ) -> list[expand.Instance]:
        doc_path: DocPath = ("stages", name)
        where = self.where(doc_path)
        bad = sorted(INVALID_NAME_CHARS & set(name))
        if not name or bad:
            raise StageFileError(
                f"{where}: invalid stage name '{name}'; a name cannot be empty "
                f"or contain {' '.join(repr(c) for c in bad) or 'those characters'}"
            )
        if not isinstance(definition, dict):
            raise StageFileError(
                f"{where}: stage '{name}' must be a mapping of fields such as "
                f"cmd and outs, not {type(definition).__name__}"
            )
        if "foreach" in definition or "do" in definition:
            self.check_fields(name, definition, FOREACH_FIELDS, doc_path)
            if "foreach" not in definition:
                raise StageFileError(
                    f"{where}: stage '{name}' has 'do' but no 'foreach'; add "
                    "'foreach:' with the items to generate stages for"
                )
            return expand.expand_foreach(name, definition, context, where)
        if MATRIX_FIELD in definition:
            return expand.expand_matrix(name, definition, context, where)
        return [expand.Instance(name, definition, doc_path)]

    def check_fields(
        self,
        name: str,
        definition: dict[str, Any],
        valid: tuple[str, ...],
        doc_path: DocPath,
    ) -> None:
        for key in definition:
            if key not in valid:
                raise StageFileError(
                    f"{self.where((*doc_path, str(key)))}: stage '{name}' has an "
                    f"unknown field '{key}'; valid fields are {', '.join(valid)}"
                )

    def build_stage(self, instance: expand.Instance, base: Context) -> Stage:
        name, body, doc_path = instance.name, instance.body, instance.doc_path
        valid = STAGE_FIELDS + ((MATRIX_FIELD,) if doc_path == ("stages", name) else ())
        self.check_fields(name, body, valid, doc_path)
        body = {k: v for k, v in body.items() if k != MATRIX_FIELD}
        if "cmd" not in body:
            raise StageFileError(
                f"{self.where(doc_path)}: stage '{name}' has no 'cmd'; add the "
                "command that produces its outputs"
            )
        context = base.copy()
        for key, value in instance.bindings.items():
            context.set_local(key, value, f"stages.{name}")
        fields = _StageFields(self, name, doc_path, body, context)
        wdir = fields.string("wdir", default=".")
        workspace_wdir = fields.checked_path(self.base_dir, wdir, "wdir")
        self.merge_vars(
            context,
            body.get("vars"),
            (*doc_path, "vars"),
            workspace_wdir,
            f"stages.{name}.",
        )
        return Stage(
            name=name,
            cmd=fields.command(body["cmd"]),
            wdir=wdir,
            workspace_wdir=workspace_wdir,
            deps=fields.deps(body.get("deps"), workspace_wdir),
            params=fields.params(body.get("params"), workspace_wdir),
            outs=tuple(
                out
                for kind in OUT_KINDS
                for out in fields.outs(kind, body.get(kind), workspace_wdir)
            ),
            frozen=fields.flag("frozen"),
            always_changed=fields.flag("always_changed"),
            desc=fields.optional_string("desc"),
            meta=fields.render(body.get("meta"), ("meta",)),
            template_params={k: dict(v) for k, v in context.used.items()},
        )

    # Top-level sections

    def list_field(self, data: dict[str, Any], doc_path: DocPath) -> list[Any]:
        value = data.get(str(doc_path[0]))
        if value is None:
            return []
        if not isinstance(value, list):
            raise StageFileError(
                f"{self.where(doc_path)}: '{doc_path[0]}' must be a list, not "
                f"{type(value).__name__}"
            )
        return value

    def string_list(self, data: dict[str, Any], key: str) -> list[str]:
        items = self.list_field(data, (key,))
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise StageFileError(
                    f"{self.where((key, index))}: '{key}' entries must be file "
                    f"paths, not {item!r}"
                )
        return items


def _field_name(sub_path: DocPath) -> str:
    """Format a path inside a stage as `outs[1]` or `params[0].other.yaml`."""
    text = ""
    for part in sub_path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


class _StageFields:
    """Templates and type-checks the fields of one stage."""

    def __init__(
        self,
        builder: _Builder,
        name: str,
        doc_path: DocPath,
        body: dict[str, Any],
        context: Context,
    ) -> None:
        self.builder = builder
        self.name = name
        self.doc_path = doc_path
        self.body = body
        self.context = context

    def where(self, sub_path: DocPath) -> str:
        return self.builder.where((*self.doc_path, *sub_path))

    def fail(self, sub_path: DocPath, message: str) -> StageFileError:
        return StageFileError(f"{self.where(sub_path)}: stage '{self.name}': {message}")

    def raw(self, key: str) -> Any:
        return self.body.get(key)

    def render(self, value: Any, sub_path: DocPath, *, in_cmd: bool = False) -> Any:
        """Template `value`, walking lists and mappings item by item.

        An error then names the line of the item, key or flag that contains
        the bad expression.
        """
        if isinstance(value, list):
            return [
                self.render(item, (*sub_path, index), in_cmd=in_cmd)
                for index, item in enumerate(value)
            ]
        if isinstance(value, dict):
            rendered: dict[Any, Any] = {}
            for key, item in value.items():
                item_path = (*sub_path, str(key))
                new_key = self.render_leaf(key, item_path, is_key=True)
                rendered[new_key] = self.render(item, item_path, in_cmd=in_cmd)
            return rendered
        return self.render_leaf(value, sub_path, in_cmd=in_cmd)

    def render_leaf(
        self,
        value: Any,
        sub_path: DocPath,
        *,
        in_cmd: bool = False,
        is_key: bool = False,
    ) -> Any:
        try:
            return render(value, self.context, in_cmd=in_cmd)
        except (Unresolved, BadValue) as exc:
            full_path = (*self.doc_path, *sub_path)
            where = self.builder.loaded.where_key if is_key else self.builder.where
            raise template_error(
                exc, where(full_path), self.name, _field_name(sub_path)
            ) from None

    def string(self, key: str, *, default: str) -> str:
        value = self.optional_string(key)
        return default if value is None else value

    def optional_string(self, key: str) -> str | None:
        value = self.render(self.raw(key), (key,))
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail((key,), f"{key} must be a string, not {value!r}")
        return value

    def flag(self, key: str) -> bool:
        value = self.render(self.raw(key), (key,))
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail((key,), f"{key} must be true or false, not {value!r}")
        return value

    def command(self, raw: Any) -> str | tuple[str, ...]:
        value = self.render(raw, ("cmd",), in_cmd=True)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value:
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise self.fail(
                        ("cmd", index), f"each command must be a string, not {item!r}"
                    )
            return tuple(value)
        raise self.fail(
            ("cmd",),
            f"cmd must be a command or a non-empty list of them, not {value!r}",
        )

    def items(self, key: str, raw: Any) -> list[Any]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.fail(
                (key,), f"{key} must be a list, not {type(raw).__name__} {raw!r}"
            )
        value = self.render(raw, (key,))
        assert isinstance(value, list)
        return value

    def checked_path(
        self, base: str, path: str, what: str, *sub_path: str | int
    ) -> str:
        result = workspace_path(base, path)
        if result is None:
            raise PathOutsideWorkspace(
                f"{self.where(sub_path or (what,))}: stage '{self.name}': {what} "
                f"'{path}' is absolute or leaves the workspace; use a path "
                "inside the workspace, relative to the stage's wdir"
            )
        return result

    def deps(self, raw: Any, wdir: str) -> tuple[Dep, ...]:
        deps: list[Dep] = []
        for index, item in enumerate(self.items("deps", raw)):
            if not isinstance(item, str) or not item:
                raise self.fail(
                    ("deps", index), f"a dependency must be a path, not {item!r}"
                )
            location = self.checked_path(wdir, item, "dependency", "deps", index)
            deps.append(Dep(item, location, where=self.where(("deps", index))))
        return tuple(deps)

    def params(self, raw: Any, wdir: str) -> tuple[ParamsDep, ...]:
        keys_by_file: dict[str, list[str] | None] = {}
        items = self.items("params", raw)
        whole = {
            str(name)
            for item in items
            if isinstance(item, dict)
            for name, keys in item.items()
            if not keys
        }
        # Where each file and each (file, key) is declared, for messages.
        file_where: dict[str, str] = {}
        key_where: dict[tuple[str, str], str] = {}
        for index, item in enumerate(items):
            if isinstance(item, str):
                where = self.where(("params", index))
                file_where.setdefault(DEFAULT_PARAMS_FILE, where)
                key_where.setdefault((DEFAULT_PARAMS_FILE, item), where)
                if DEFAULT_PARAMS_FILE not in whole:
                    self.add_keys(keys_by_file, DEFAULT_PARAMS_FILE, [item])
                continue
            if not isinstance(item, dict):
                raise self.fail(
                    ("params", index),
                    f"a params entry must be a key of params.yaml or a mapping "
                    f"of a file to its keys, not {item!r}",
                )
            for file_name, keys in item.items():
                file_name = str(file_name)
                entry: DocPath = ("params", index, file_name)
                file_where.setdefault(file_name, self.where(("params", index)))
                if isinstance(keys, list):
                    for key_index, key in enumerate(keys):
                        where = self.where((*entry, key_index))
                        key_where.setdefault((file_name, str(key)), where)
                if file_name in whole:
                    keys_by_file[file_name] = None
                    continue
                if not isinstance(keys, list) or not all(
                    isinstance(k, str) for k in keys
                ):
                    raise self.fail(
                        ("params", index, file_name),
                        f"params of '{file_name}' must be a list of keys, or an "
                        f"empty list for all of them, not {keys!r}",
                    )
                self.add_keys(keys_by_file, file_name, keys)
        result = []
        for file_name, keys in keys_by_file.items():
            path = self.checked_path(wdir, file_name, "params file", "params")
            result.append(
                ParamsDep(
                    file_name,
                    path,
                    None if keys is None else tuple(keys),
                    where=file_where[file_name],
                    key_where={
                        key: where
                        for (name, key), where in key_where.items()
                        if name == file_name
                    },
                )
            )
        return tuple(result)

    @staticmethod
    def add_keys(
        keys_by_file: dict[str, list[str] | None], file_name: str, keys: list[str]
    ) -> None:
        existing = keys_by_file.setdefault(file_name, [])
        if existing is None:
            return
        existing.extend(key for key in keys if key not in existing)

    def outs(self, kind: OutKind, raw: Any, wdir: str) -> list[Out]:
        outs: list[Out] = []
        for index, item in enumerate(self.items(kind, raw)):
            if isinstance(item, str):
                entries: list[tuple[Any, Any]] = [(item, None)]
            elif isinstance(item, dict):
                entries = list(item.items())
            else:
                raise self.fail(
                    (kind, index),
                    f"an entry of {kind} must be a path or a mapping of a path "
                    f"to its flags, not {item!r}",
                )
            for path, flags in entries:
                outs.append(self.out(kind, index, path, flags, wdir))
        return outs

    def out(self, kind: OutKind, index: int, path: Any, flags: Any, wdir: str) -> Out:
        sub_path: DocPath = (kind, index)
        if not isinstance(path, str) or not path:
            raise self.fail(sub_path, f"an output must be a path, not {path!r}")
        if flags is None:
            flags = {}
        if not isinstance(flags, dict):
            raise self.fail(
                sub_path,
                f"the flags of output '{path}' must be a mapping such as "
                f"{{cache: false}}, not {flags!r}",
            )
        valid = OUT_FLAGS | PLOT_FLAGS if kind == "plots" else OUT_FLAGS
        for flag_name, value in flags.items():
            expected = valid.get(str(flag_name))
            if expected is None:
                raise self.fail(
                    sub_path,
                    f"output '{path}' has an unknown flag '{flag_name}'; valid "
                    f"flags are {', '.join(valid)}",
                )
            if not isinstance(value, expected):
                type_name = getattr(expected, "__name__", str(expected))
                raise self.fail(
                    sub_path,
                    f"flag '{flag_name}' of output '{path}' must be a "
                    f"{type_name}, not {value!r}",
                )
        location = self.checked_path(wdir, path, "output", *sub_path)
        if location == ".":
            raise PathOutsideWorkspace(
                f"{self.where(sub_path)}: stage '{self.name}': output '{path}' "
                "is the whole workspace; name a file or folder inside it"
            )
        reserved = reserved_reason(location, self.builder.base_dir)
        if reserved is not None:
            raise self.fail(
                sub_path,
                f"output '{path}' is {reserved}. A run deletes its outputs "
                "first, so name a file or folder that only this stage writes",
            )
        options = {
            key: value
            for key, value in flags.items()
            if key not in ("cache", "persist", "push")
        }
        return Out(
            path=path,
            workspace_path=location,
            kind=kind,
            cache=flags.get("cache", True),
            persist=flags.get("persist", False),
            push=flags.get("push", True),
            options=options,
        )
