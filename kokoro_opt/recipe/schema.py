"""Recipe files: a strict schema and a YAML loader whose errors name the file, line and key.

A recipe (YAML, `version: 1`) says which model to start from and which steps to run on it:

    version: 1
    name: cpu-int8
    description: FP32 reference -> optimize -> static INT8 -> eval -> bench -> gate.
    model: kokoro-fp32            # a cache name or a path (relative to the recipe file)
    reference: kokoro-fp32        # what eval/bench/gate compare with (default: model)
    threads: 2
    steps:
      - pull                      # a step without options
      - optimize: {level: basic, simplify: false, fusion: false}
      - quantize: {}              # options of kokoro_opt.passes.quantize_static.Config
      - eval: {texts: heldout, limit: 20}
      - bench: {runs: 3}
      - gate: {rules: default}
    outputs:
      model: kokoro-cpu-int8.onnx # the final model's file name in the run folder

Each step is one key (its kind) whose value holds its options, validated against the Config
of the library function the step calls (the same one the CLI command calls), so a typo or a
wrong type fails before anything runs: `cpu-int8.yaml:9: steps[1] (optimize): level: Input
should be 'basic', 'extended' or 'layout'`. Relative paths in options are read relative to the
recipe file. Loading never imports onnxruntime.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kokoro_opt.errors import RecipeError

RECIPE_VERSION = 1
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Outputs(BaseModel):
    """What the run leaves besides every step's artifacts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        default=None,
        description="File name for the final model in the run folder (a copy of the last model "
        "step's output), such as kokoro-cpu-int8.onnx.",
    )

    @field_validator("model")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.onnx", value):
            raise ValueError(
                f"{value!r} is not a plain .onnx file name; write a name such as "
                "kokoro-cpu-int8.onnx (no folders)"
            )
        return value


class RecipeHeader(BaseModel):
    """The top level of a recipe file; `steps` are checked one by one against their kinds."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1] = RECIPE_VERSION
    name: str = Field(pattern=_NAME_PATTERN, max_length=80)
    description: str = ""
    model: str = Field(min_length=1, description="Cache name (such as kokoro-fp32) or a path.")
    reference: str | None = Field(
        default=None, min_length=1, description="The model evidence compares with; default: model."
    )
    threads: int = Field(default=2, ge=1, le=256, description="Intra-op threads for every step.")
    executor: str = Field(
        default="local",
        description="Where eval's measuring tasks run: local, processes[:N] or ray[:ADDRESS] "
        "(results are the same; timing always runs on this machine).",
    )
    steps: list[Any] = Field(min_length=1)
    outputs: Outputs = Field(default_factory=Outputs)

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        from kokoro_opt.errors import UserInputError
        from kokoro_opt.measure.executors import check_executor

        try:
            return check_executor(value)
        except UserInputError as exc:
            raise ValueError(str(exc).removeprefix("--executor ").rstrip(".")) from None


@dataclass
class Step:
    """One validated step: its kind, a unique id, the validated options, and where it was."""

    kind: str
    id: str
    index: int
    line: int
    config: BaseModel
    raw: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        return f"steps[{self.index}] ({self.kind})"


@dataclass
class Recipe:
    """A loaded recipe: the header fields, the validated steps, the file it came from."""

    name: str
    description: str
    model: str
    reference: str | None
    threads: int
    steps: list[Step]
    outputs: Outputs
    path: Path
    text: str
    sha256: str
    executor: str = "local"

    @property
    def folder(self) -> Path:
        return self.path.parent

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in (for the provenance manifest and `show`)."""
        return {
            "version": RECIPE_VERSION,
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "reference": self.reference or self.model,
            "threads": self.threads,
            "executor": self.executor,
            "steps": [
                {"id": s.id, "kind": s.kind, "options": s.config.model_dump(mode="json")}
                for s in self.steps
            ],
            "outputs": self.outputs.model_dump(mode="json"),
        }


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (RecipeError naming file, line and key on any problem)."""
    path = Path(path).expanduser()
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise RecipeError(
            f"Recipe file '{path}' {where}; give a YAML file such as recipes/cpu-int8.yaml or the "
            "name of a shipped recipe (see `kokoro-opt recipes list`)."
        )
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"Cannot read recipe file '{path}': {exc}.") from None
    return parse_recipe(text, source=path, sha256=hashlib.sha256(raw).hexdigest())


def parse_recipe(text: str, *, source: str | Path, sha256: str | None = None) -> Recipe:
    """Validate a recipe from YAML text; `source` names it in errors and anchors relative paths."""
    from kokoro_opt.recipe import steps as registry

    source = Path(source)
    root, data = _parse_yaml(text, str(source))
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}:1: a recipe must be a mapping with 'name', 'model' and 'steps'; see "
            "docs/recipes.md or `kokoro-opt recipes show cpu-int8`."
        )
    if "version" in data and data["version"] != RECIPE_VERSION:
        raise RecipeError(
            f"{source}:{_line_of(root, ('version',))}: version: recipe version "
            f"{data['version']!r} is not supported; this kokoro-opt reads version {RECIPE_VERSION}."
        )
    try:
        header = RecipeHeader.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, root, str(source), (), RecipeHeader) from None

    folder = source.parent
    _check_model_source(header.model, folder, root, str(source), "model")
    if header.reference is not None:
        _check_model_source(header.reference, folder, root, str(source), "reference")

    steps: list[Step] = []
    counts: dict[str, int] = {}
    for index, item in enumerate(header.steps):
        loc: tuple[Any, ...] = ("steps", index)
        line = _line_of(root, loc)
        kind, options = _split_step(item, source, line, index)
        spec = registry.STEP_KINDS.get(kind)
        if spec is None:
            known = list(registry.STEP_KINDS)
            close = difflib.get_close_matches(kind, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(
                f"{source}:{line}: steps[{index}]: unknown step '{kind}'{hint}; allowed steps: "
                f"{', '.join(known)}."
            )
        missing = spec.unavailable()
        if missing:
            raise RecipeError(
                f"{source}:{line}: steps[{index}] ({kind}): this step is not available in this "
                f"kokoro-opt yet ({missing}); remove it from the recipe or update kokoro-opt."
            )
        options = _absolute_paths(options, folder)
        try:
            config = spec.validate(options)
        except ValidationError as exc:
            raise _validation_error(
                exc, root, str(source), (*loc, kind), spec.options_model(), step=(index, kind)
            ) from None
        except ValueError as exc:  # a cross-field rule of a step wrapper
            raise RecipeError(
                f"{source}:{line}: steps[{index}] ({kind}): {_clean(str(exc))}."
            ) from None
        problem = spec.check_files(config)
        if problem:
            key, message = problem
            key_line = _line_of(root, (*loc, kind, key))
            raise RecipeError(f"{source}:{key_line}: steps[{index}] ({kind}): {key}: {message}.")
        counts[kind] = counts.get(kind, 0) + 1
        step_id = kind if counts[kind] == 1 else f"{kind}-{counts[kind]}"
        steps.append(Step(kind, step_id, index, line, config, raw=options))
    _check_order(steps, str(source))
    return Recipe(
        name=header.name,
        description=header.description,
        model=header.model,
        reference=header.reference,
        threads=header.threads,
        steps=steps,
        outputs=header.outputs,
        path=source.absolute(),
        text=text,
        sha256=sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest(),
        executor=header.executor,
    )


# --------------------------------------------------------------------------- shipped recipes


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped with kokoro-opt (package data; `recipes/` in a checkout links there)."""
    from importlib.resources import files

    folder = Path(str(files("kokoro_opt") / "data" / "recipes"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = str(name_or_path).removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    if path.suffix in (".yaml", ".yml") or "/" in str(name_or_path):
        raise RecipeError(
            f"Recipe file '{path}' does not exist; give an existing YAML file or a shipped "
            f"recipe name ({', '.join(shipped) or 'none'})."
        )
    close = difflib.get_close_matches(name, list(shipped), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise RecipeError(
        f"No recipe '{name_or_path}': it is neither a file nor a shipped recipe ("
        f"{', '.join(shipped) or 'none'}).{hint}"
    )


# --------------------------------------------------------------------------- helpers


def _parse_yaml(text: str, source: str) -> tuple[Any, Any]:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(exc.problem or exc.context or "malformed YAML").split())
        raise RecipeError(
            f"{where}: malformed YAML ({problem}); fix the syntax (indentation, colons, quotes)."
        ) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: malformed YAML ({_clean(str(exc))}).") from None
    if root is not None:
        _reject_duplicate_keys(root, source)
    return root, data


def _split_step(item: Any, source: Path, line: int | None, index: int) -> tuple[str, dict]:
    """A step is `kind` or `{kind: {options}}` (or `{kind: null}`)."""
    if isinstance(item, str) and item.strip():
        return item.strip(), {}
    if isinstance(item, dict) and len(item) == 1:
        kind, options = next(iter(item.items()))
        if options is None:
            options = {}
        if not isinstance(kind, str):
            raise RecipeError(f"{source}:{line}: steps[{index}]: a step name must be text.")
        if not isinstance(options, dict):
            raise RecipeError(
                f"{source}:{line}: steps[{index}] ({kind}): options must be a mapping of key: "
                f"value (or nothing), not {type(options).__name__}; write '- {kind}: {{}}'."
            )
        return kind, options
    if isinstance(item, dict):
        names = ", ".join(str(k) for k in item) or "nothing"
        raise RecipeError(
            f"{source}:{line}: steps[{index}]: a step is one key (its name) with its options "
            f"indented under it; this item has {len(item)} keys ({names}). Start each step with "
            "its own '- '."
        )
    raise RecipeError(
        f"{source}:{line}: steps[{index}]: a step is a name such as 'pull' or a mapping such as "
        "'optimize: {level: basic}'."
    )


def _absolute_paths(options: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Option values naming existing files relative to the recipe become absolute paths."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            candidate = folder / value
            if ("/" in value or "." in value) and candidate.exists():
                return str(candidate.absolute())
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {k: fix(v) for k, v in options.items()}


def _check_model_source(text: str, folder: Path, root: Any, source: str, key: str) -> None:
    """A path-like model source must exist; a cache name is checked when the run starts."""
    from kokoro_opt.store.cache import DEFAULT_NAMES

    value = text.strip()
    path = Path(value).expanduser()
    looks_like_path = "/" in value or value.endswith(".onnx") or path.is_absolute()
    if not looks_like_path or value.removesuffix(".onnx") in DEFAULT_NAMES:
        return
    candidate = path if path.is_absolute() else folder / path
    if not candidate.is_file():
        raise RecipeError(
            f"{source}:{_line_of(root, (key,))}: {key}: model file '{value}' does not exist "
            f"(looked for {candidate}); give an existing .onnx path (relative to the recipe) or "
            "a cache name such as kokoro-fp32."
        )


def model_source_path(text: str, folder: Path) -> str:
    """The model source as the store resolves it: a path relative to the recipe, or a name."""
    value = text.strip()
    path = Path(value).expanduser()
    if not path.is_absolute() and (folder / path).is_file():
        return str((folder / path).absolute())
    return value


def _check_order(steps: list[Step], source: str) -> None:
    from kokoro_opt.recipe.steps import STEP_KINDS

    seen_other = False
    after_shapes: Step | None = None
    split: Step | None = None
    buckets: dict[str, Step] = {}
    float_broken: Step | None = None
    evidence = False
    for step in steps:
        role = STEP_KINDS[step.kind].role
        where = f"{source}:{step.line}: {step.label()}"
        if role == "pull":
            if seen_other:
                raise RecipeError(
                    f"{where}: pull must come before every other step (it fetches the models "
                    "they read); move it to the top."
                )
            continue
        seen_other = True
        if role == "transform":
            if after_shapes is not None:
                raise RecipeError(
                    f"{where}: a model step cannot follow {after_shapes.label()}: shapes writes "
                    "a folder of bucket models; put shapes after every model step."
                )
            if STEP_KINDS[step.kind].needs_float and float_broken is not None:
                raise RecipeError(
                    f"{where}: {step.kind} needs a float model, but {float_broken.label()} "
                    "already quantized it; start from the float model or drop one of them."
                )
            if STEP_KINDS[step.kind].quantizes:
                float_broken = step
        elif role == "buckets":
            window = getattr(step.config, "window_frames", None) is not None
            what = "window" if window else step.kind
            if window and split is None:
                raise RecipeError(
                    f"{where}: window_frames binds the back graphs of a split folder; put a "
                    "split step before it."
                )
            if what in buckets:
                raise RecipeError(
                    f"{where}: only one {step.kind} step"
                    + (" with window_frames" if window else "")
                    + " is allowed"
                    + ("; merge the tokens." if what == "shapes" else ".")
                )
            buckets[what] = step
            split = step if step.kind == "split" else split
            after_shapes = after_shapes or step
        elif role == "evidence":
            evidence = True
        elif role == "gate" and not evidence:
            raise RecipeError(
                f"{where}: gate checks the evidence report, so it needs an eval or bench step "
                "before it."
            )


def _validation_error(
    exc: ValidationError,
    root: Any,
    source: str,
    prefix: tuple[Any, ...],
    model: type[BaseModel],
    *,
    step: tuple[int, str] | None = None,
) -> RecipeError:
    errors = exc.errors(include_url=False)
    # a misspelt key also makes the right one "missing": report the unknown key first
    err = min(
        errors,
        key=lambda e: (e["type"] != "extra_forbidden", _line_of(root, (*prefix, *e["loc"])) or 0),
    )
    loc = tuple(err["loc"])
    line = _line_of(root, (*prefix, *loc))
    key = _dotted(loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        msg = f"unknown key{hint}; allowed keys: {', '.join(model.model_fields) or 'none'}"
    elif err["type"] == "missing":
        msg = "missing required key"
    else:
        msg = _clean(str(err["msg"]))
        if isinstance(err.get("input"), bool) and not err["type"].startswith("bool"):
            word = "true" if err["input"] else "false"
            msg += f" (YAML read the value as {word}: quote words such as 'on', 'off', 'yes')"
        elif "input" in err and err["type"].endswith(("_type", "_parsing")):
            msg += f" (got {type(err['input']).__name__} {err['input']!r})"
    more = len(errors) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
    head = f"{source}:{line}" if line else source
    if step is not None:
        head += f": steps[{step[0]}] ({step[1]})"
    return RecipeError(f"{head}: {key}: {msg}{tail}." if key else f"{head}: {msg}{tail}.")


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ").rstrip(".").splitlines()[0]


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-"):
            out += f".{part}" if out else part
    return out


def _line_of(root: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (the deepest one that exists)."""
    import yaml

    if root is None:
        return None
    node = root
    line = node.start_mark.line + 1
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if getattr(key, "value", None) == part:
                    nxt = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def _reject_duplicate_keys(node: Any, source: str) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = getattr(key, "value", None)
            if isinstance(name, str):
                if name in seen:
                    raise RecipeError(
                        f"{source}:{key.start_mark.line + 1}: key '{name}' appears twice in one "
                        "mapping; keep one."
                    )
                seen.add(name)
            _reject_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, source)
