"""The configuration file: YAML → frozen pydantic models.

Each job's ``<name>_sd_configs`` keys come from the mechanism registry, so a plugin's
mechanism is configured exactly like a built-in one. Unknown keys are errors, and every
error names the file and its path, e.g. ``jobs[0].exec_sd_configs[0].command: ...``.
Relative paths are resolved against the config file's directory, as Prometheus does.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Any, Self, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .discovery import mechanisms
from .discovery.base import MechanismConfig, resolve_path
from .durations import Duration
from .errors import ConfigError
from .masking import is_secret_name
from .registry.config import RegistryConfig
from .relabel import RelabelConfig
from .yamlload import UniqueKeyLoader, YAMLProblem, format_location, load_yaml

JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_.-]*$")
FILE_SUFFIXES = (".json", ".yml", ".yaml")
MAX_CONFIRMATIONS = 1000
DEFAULT_MAX_CONFIG_SIZE = 16 * 1024 * 1024
"""``--config.max-size``: the largest config or web config file read (16 MiB)."""
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2}
_SIZE_UNITS |= {"gb": 1024**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"([0-9]{1,10})\s*([a-z]*)", re.IGNORECASE)
MAX_CONFIG_SIZE_LIMIT = 1024**3
MAX_FILE_MODE = 0o7777


class StrictModel(BaseModel):
    """Frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishDelay(StrictModel):
    """Publish pacing: at once after a quiet period, then ``min`` apart, within ``max`` of a change."""

    min: Duration = 0.25
    max: Duration = 2.0

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError("publish_delay.min must not exceed publish_delay.max")
        return self


class GlobalConfig(StrictModel):
    """Settings shared by every job."""

    data_dir: Path = Path("data")
    publish_delay: PublishDelay = PublishDelay()


class WebConfig(StrictModel):
    """The HTTP server (http_sd, API, UI, metrics); command-line flags take precedence."""

    listen_address: str | None = None

    @field_validator("listen_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _, sep, port = value.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()):
            raise ValueError(f"{value[:80]!r} must be host:port, e.g. 127.0.0.1:9099")
        if len(port) > 5 or int(port) > 65535:
            raise ValueError(f"port {port[:10]} is out of range: 0 to 65535 (0 picks a free port)")
        return value


class GuardConfig(StrictModel):
    """Mass-deletion protection: hold back an update that drops too many targets."""

    enabled: bool = True
    max_drop_ratio: float = Field(0.5, ge=0.0, le=1.0)
    confirmations: int = Field(3, ge=1, le=MAX_CONFIRMATIONS)
    hold_for: Duration = 300.0


class OutputConfig(StrictModel):
    """Where a job is published besides ``/sd/<job>``."""

    file: Path | None = None
    file_mode: int = 0o644
    pretty: bool = False

    @field_validator("file_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        # Always octal digits: "0644" (a string), or 0644 / 644 unquoted, which the config
        # loader reads as the integer 644 (no YAML 1.1 implicit octal, see _ConfigLoader).
        if isinstance(value, str | int) and not isinstance(value, bool):
            text = str(value)
            if len(text.lstrip("+-0")) > 4:  # more digits than 7777: never convert huge ints
                raise ValueError(f"file_mode {text[:20]}... is out of range: 0000 to 7777 (octal)")
            try:
                mode = int(text, 8)
            except ValueError:
                raise ValueError(f"file_mode must be octal, e.g. '0644', got {value!r}") from None
            if not 0 <= mode <= MAX_FILE_MODE:
                raise ValueError(f"file_mode {value!r} is out of range: 0000 to 7777 (octal)")
            return mode
        return value

    @field_validator("file")
    @classmethod
    def _file_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() not in FILE_SUFFIXES:
            raise ValueError(f"{value} must end in .json, .yml or .yaml for file_sd to read it")
        return value


class JobConfigBase(StrictModel):
    """A job's settings other than its mechanisms."""

    name: str
    relabel_configs: list[RelabelConfig] = Field(default_factory=list)
    # Targets dropped by relabeling kept for the UI (0: no limit, as in Prometheus).
    keep_dropped_targets: int = Field(100, ge=0)
    guard: GuardConfig = GuardConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not JOB_NAME_RE.fullmatch(value):  # fullmatch: "$" would accept "web\n"
            raise ValueError(f"job name {value!r} must match {JOB_NAME_RE.pattern}")
        return value

    def mechanism_configs(self) -> list[tuple[str, MechanismConfig]]:
        """Each mechanism config of the job with its mechanism name, in a stable order."""
        found = []
        for mechanism in sorted(mechanisms().values(), key=lambda m: m.name):
            for entry in getattr(self, mechanism.config_key, ()):
                found.append((mechanism.name, entry))
        return found

    @model_validator(mode="after")
    def _has_mechanism(self) -> Self:
        if not self.mechanism_configs():
            keys = ", ".join(m.config_key for m in mechanisms().values())
            raise ValueError(f"job {self.name!r} has no mechanism; add one of: {keys}")
        return self


class ConfigBase(StrictModel):
    """The whole file."""

    global_: GlobalConfig = Field(GlobalConfig(), alias="global")
    web: WebConfig = WebConfig()
    registry: RegistryConfig = RegistryConfig()  # the built-in registry's API (sdbridge.registry)
    jobs: list[JobConfigBase] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def check_jobs(self, origin: str) -> None:
        """Raise ConfigError for duplicate job names or two jobs writing the same file.

        Run after path resolution, so ``a.json`` and ``./a.json`` are the same file.
        """
        messages = duplicate_job_messages(
            [(job.name, job.output.file) for job in self.jobs], origin
        )
        if messages:
            raise ConfigError("\n".join(messages), errors=messages)


def duplicate_job_messages(jobs: list[tuple[str | None, Path | None]], origin: str) -> list[str]:
    """Cross-job errors: two jobs with one name, or two jobs writing one file.

    ``jobs`` holds each job's name and resolved output file, None where unknown (a job
    whose own fields are invalid still takes part, so all errors are reported at once).
    """
    messages = []
    names: dict[str, int] = {}
    files: dict[Path, str] = {}
    for index, (name, file) in enumerate(jobs):
        if name is not None:
            if name in names:
                messages.append(
                    f"{origin}: jobs[{index}].name: duplicate job name {name!r} "
                    f"(also jobs[{names[name]}])"
                )
            names.setdefault(name, index)
        if file is None:
            continue
        key = file.resolve()
        if key in files:
            messages.append(
                f"{origin}: jobs[{index}].output.file: jobs {files[key]!r} and "
                f"{name!r} write the same file {file}"
            )
        files.setdefault(key, str(name))
    return messages


def _raw_jobs(data: dict[str, Any], base_dir: Path) -> list[tuple[str | None, Path | None]]:
    # The names and output files of jobs as written, for cross-job checks on a config
    # that did not validate.
    jobs = data.get("jobs")
    found: list[tuple[str | None, Path | None]] = []
    for job in jobs if isinstance(jobs, list) else ():
        job = job if isinstance(job, dict) else {}
        name = job.get("name")
        output = job.get("output")
        file = output.get("file") if isinstance(output, dict) else None
        found.append(
            (
                name if isinstance(name, str) else None,
                resolve_path(Path(file), base_dir) if isinstance(file, str) and file else None,
            )
        )
    return found


_built_models: tuple[tuple[str, ...], type[ConfigBase], type[JobConfigBase]] | None = None


def config_models() -> tuple[type[ConfigBase], type[JobConfigBase]]:
    """The Config and JobConfig models for the mechanisms registered now (plugins included).

    Each mechanism adds its ``<name>_sd_configs`` field; the models are rebuilt only when
    the set of mechanisms changed since the last call.
    """
    global _built_models
    registered = mechanisms()
    names = tuple(sorted(registered))
    if _built_models is None or _built_models[0] != names:
        fields: dict[str, Any] = {
            m.config_key: (list[m.config_model], Field(default_factory=list))  # type: ignore[name-defined]
            for m in registered.values()
        }
        job_model = create_model("JobConfig", __base__=JobConfigBase, **fields)
        config_model = create_model(
            "Config", __base__=ConfigBase, jobs=(list[job_model], Field(default_factory=list))
        )
        _built_models = (names, config_model, job_model)
    return _built_models[1], _built_models[2]


def validation_messages(
    exc: ValidationError, origin: str, model: type[BaseModel] | None = None
) -> list[str]:
    """Pydantic's errors in an operator's words, each naming the file and the path.

    An unknown key gets the closest valid key of ``model`` at that place ("did you
    mean ...?"); type errors say what shape was expected and what was given.
    """
    messages = []
    for error in exc.errors(include_url=False):
        loc = tuple(
            p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        messages.append(f"{origin}: {format_location(loc)}: {_explain(error, loc, model)}")
    return messages


def _explain(error: Any, loc: tuple[int | str, ...], model: type[BaseModel] | None) -> str:
    kind = error["type"]
    given = error.get("input")
    secret = any(isinstance(part, str) and is_secret_name(part) for part in loc)
    got = "" if secret else f", got {_shape(given)}"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        if key.endswith("_sd_configs"):
            # Compare mechanism names alone: every key shares the "_sd_configs" tail.
            known = sorted(m.name for m in mechanisms().values())
            close = difflib.get_close_matches(key.removesuffix("_sd_configs"), known, n=1)
            if close:
                return f"unknown mechanism; did you mean '{close[0]}_sd_configs'?"
            keys = ", ".join(f"{name}_sd_configs" for name in known)
            return f"unknown mechanism (known: {keys}; is its plugin installed?)"
        valid = _keys_at(model, loc[:-1]) if model is not None else []
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
    if kind == "missing":
        return "required key is missing"
    expected = _EXPECTED.get(kind)
    if expected is not None:
        return f"expected {expected}{got}"
    if kind == "literal_error":
        return f"expected one of {error.get('ctx', {}).get('expected', '?')}{got}"
    message = str(error["msg"])
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if message.startswith("Input should be "):
        return "must be " + message.removeprefix("Input should be ") + got
    return message


_LIST = "a list (one '- item' per line, or [a, b])"
_MAPPING = "a mapping of key: value lines (or {key: value})"
_EXPECTED = {
    "list_type": _LIST,
    "tuple_type": _LIST,
    "set_type": _LIST,
    "dict_type": _MAPPING,
    "model_type": _MAPPING,
    "model_attributes_type": _MAPPING,
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "path_type": "a file path",
}


def _shape(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys valid at ``loc`` inside ``model`` (aliases as written in YAML)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = [a for a in get_args(current) if a is not type(None)]
            if get_origin(current) is dict and len(args) == 2:
                current = args[1]
            elif args:
                current = args[0]
            else:
                return []
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = _field_named(current, part)
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [field.alias or name for name, field in current.model_fields.items()]
    return []


def _field_named(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _unwrap(annotation: Any) -> Any:
    # X | None -> X
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def parse_config(
    data: Any, *, origin: str = "<config>", base_dir: Path | None = None
) -> ConfigBase:
    """Validate decoded YAML into a Config; raise ConfigError with every error found."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the config must be a mapping, got {type(data).__name__}")
    config_model, _ = config_models()
    try:
        config = config_model.model_validate(data)
    except ValidationError as exc:
        messages = validation_messages(exc, origin, config_model)
        # Cross-job errors too, so a second run does not bring up new ones.
        base = base_dir if base_dir is not None else Path.cwd()
        messages += duplicate_job_messages(_raw_jobs(data, base), origin)
        raise ConfigError("\n".join(messages), errors=messages) from None
    config = resolve_paths(config, base_dir if base_dir is not None else Path.cwd())
    config.check_jobs(origin)
    return config


def resolve_paths(config: ConfigBase, base_dir: Path) -> ConfigBase:
    """Resolve every relative path of ``config`` against ``base_dir`` (the config's directory).

    Covers ``global.data_dir``, each ``output.file`` and whatever each mechanism config
    resolves in its :meth:`~sdbridge.discovery.base.MechanismConfig.resolve_paths`.
    """
    jobs = []
    for job in config.jobs:
        update: dict[str, Any] = {}
        if job.output.file is not None:
            file = resolve_path(job.output.file, base_dir)
            update["output"] = job.output.model_copy(update={"file": file})
        for mechanism in mechanisms().values():
            entries = getattr(job, mechanism.config_key, None)
            if entries:
                update[mechanism.config_key] = [_resolved(e, base_dir) for e in entries]
        jobs.append(job.model_copy(update=update))
    data_dir = resolve_path(config.global_.data_dir, base_dir)
    global_ = config.global_.model_copy(update={"data_dir": data_dir})
    registry = config.registry.resolve_paths(base_dir)
    return config.model_copy(update={"jobs": jobs, "global_": global_, "registry": registry})


class _ConfigLoader(UniqueKeyLoader):
    """YAML 1.1 minus implicit octal: ``0644`` is 644, not 420, so ``file_mode: 0644`` works."""


def _construct_int(loader: UniqueKeyLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        if re.fullmatch(r"[-+]?0[0-7]+", text):
            return int(text, 10)
        return int(loader.construct_yaml_int(node))
    except ValueError:  # more digits than Python converts (4300): no config number is that long
        raise yaml.constructor.ConstructorError(
            None, None, f"integer with {len(text)} digits is out of range", node.start_mark
        ) from None


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _resolved(entry: MechanismConfig, base_dir: Path) -> MechanismConfig:
    # A plugin's config may be a plain pydantic model without the hook: no paths, then.
    resolve = getattr(entry, "resolve_paths", None)
    return resolve(base_dir) if callable(resolve) else entry


def parse_size(text: str) -> int:
    """``16MiB``, ``512KB``, ``1048576``: a size in bytes (KB, MB, GB are powers of 1024).

    Raises ValueError unless the size lies between 1 byte and 1 GiB.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None or match[2].lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text[:40]!r} (use e.g. 16MiB, 512KiB or bytes)")
    size = int(match[1]) * _SIZE_UNITS[match[2].lower()]
    if not 1 <= size <= MAX_CONFIG_SIZE_LIMIT:
        raise ValueError(f"size {text!r} is out of range: 1B to 1GiB")
    return size


def format_size(size: int) -> str:
    """``16MiB``, ``1KiB``, ``100B``: the largest unit that divides ``size``."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def read_config_text(path: Path, *, max_size: int, what: str = "config file") -> str:
    """A config file's text, refused before parsing when it exceeds ``max_size`` bytes.

    Raises ConfigError naming the file: missing, unreadable, too large or not UTF-8.
    """
    try:
        with path.open("rb") as file:
            data = file.read(max_size + 1)  # never more: a huge file is refused unread
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    if len(data) > max_size:
        raise ConfigError(
            f"{path}: the {what} is larger than {format_size(max_size)} "
            "(raise the limit with --config.max-size)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc


def load_config(path: Path, *, max_size: int = DEFAULT_MAX_CONFIG_SIZE) -> ConfigBase:
    """Read, parse and validate a config file; errors name the file, line or path."""
    text = read_config_text(path, max_size=max_size)
    try:
        data = load_yaml(text, _ConfigLoader)
    except YAMLProblem as exc:
        messages = [f"{path}: {message}" for message in exc.messages]
        raise ConfigError("\n".join(messages), errors=messages) from None
    return parse_config(data, origin=str(path), base_dir=path.parent.absolute())
