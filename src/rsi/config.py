"""params.yaml into typed, validated, frozen dataclasses.

Each stage module declares its own section as a dataclass (``FZParams`` in ``rsi.fz`` …); this module only
validates. Every error names the file, the key path, the value, and what is allowed. It also reads the few
keys that stages read without computing with their section (the top-level ``seed``, ``criteria.blocks``,
``natural.blocks``, ``activations.scale_fraction``) and the ``--block`` argument, so that no stage imports
another stage's module for them.

Field metadata understood: ``min``, ``max`` (inclusive bounds), ``check`` (a callable that returns the
normalised value or raises ValueError with a message), ``help`` (documentation, shown in errors).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


# set by DVC for every stage command it runs (dvc.env.DVC_STAGE): the whole pipeline is running
DVC_STAGE = "DVC_STAGE"


class ParamsError(ValueError):
    """A bad params file: the message names the file, key, value and what would fix it."""


def read_dvc_yaml(path: Path) -> Any:
    """A YAML file (a params file, dvc.lock) read as DVC reads it: ruamel's safe loader, YAML 1.2. PyYAML's
    YAML 1.1 reads ``5e-05`` (how ``dvc exp run -S fz.lr=0.00005`` writes it) as a string and ``yes``/``on``
    as booleans, so rsi would compute with other values than DVC tracks. Raises ruamel's YAMLError."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(Path(path))


def dump_dvc_yaml(data: Any) -> str:
    """``data`` as YAML 1.2 text in its own key order, which :func:`read_dvc_yaml` (and DVC) read back as
    the same values: PyYAML writes the string ``1e5`` bare, which YAML 1.2 reads as a float."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    text = io.StringIO()
    yaml.dump(data, text)
    return text.getvalue()


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The raw params mapping, read as DVC reads it (:func:`read_dvc_yaml`); a missing or malformed file,
    or a key given twice (DVC refuses that too), is a ParamsError."""
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file (run from the repository root or pass --params)")
    try:
        raw = read_dvc_yaml(path) or {}
    except DuplicateKeyError as error:
        key = error.problem.split('"')[1] if '"' in (error.problem or "") else "a key"
        first, again = error.context_mark.line + 1, error.problem_mark.line + 1
        raise ParamsError(
            f"{path}: line {again}: key {key!r} is given twice (also on line {first}); DVC refuses such a file "
            "too: keep one"
        ) from None
    except YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_section(raw: Mapping[str, Any], name: str, cls: type[T], *, source: str = "params.yaml") -> T:
    """Section ``name`` of ``raw`` as a ``cls`` instance (missing section: all defaults). Block names in
    it are checked against ``raw``'s ``model.arch`` (:func:`params_arch`)."""
    value = raw.get(name, {})
    token = _ARCH.set(_arch_of(raw, source))
    try:
        return _convert(value, cls, f"{name}", source)
    finally:
        _ARCH.reset(token)


# The model.arch of the params being loaded, so that block checks (check_blocks, fz.blocks keys, …) know
# which blocks exist (3.5 in resnet34, not in resnet18) without each section reading the model section.
_ARCH: ContextVar[str] = ContextVar("rsi_params_arch", default="resnet18")


def params_arch() -> str:
    """The ``model.arch`` of the params file that :func:`load_section` is validating (resnet18 outside)."""
    return _ARCH.get()


def _arch_of(raw: Mapping[str, Any], source: str) -> str:
    from rsi.taps import ARCHS, DEFAULT_ARCH

    model = raw.get("model")
    arch = model.get("arch", DEFAULT_ARCH) if isinstance(model, Mapping) else DEFAULT_ARCH
    if arch not in ARCHS:
        raise _fail(source, "model.arch", arch, "one of " + ", ".join(ARCHS))
    return arch


def check_sections(raw: Mapping[str, Any], known: Iterable[str], *, source: str = "params.yaml") -> None:
    """Every top-level key of ``raw`` is a known section: a misspelled ``fzz:`` would otherwise be ignored
    and its stage would run the paper defaults (hours) without a word."""
    known = list(known)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "is it misspelled?"
            raise ParamsError(
                f"{source}: unknown section {key!r} ({hint}); known sections: {', '.join(known)}"
            )


def _describe(kind: Any) -> str:
    origin = get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(kind))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(kind))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(kind)[0])}"
    if origin in (dict, Mapping):
        return f"a mapping of {_describe(get_args(kind)[1])}"
    if dataclasses.is_dataclass(kind):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(kind))
    if kind is type(None):
        return "null"
    return getattr(kind, "__name__", str(kind))


def _shown(value: Any) -> str:
    """A value as written in YAML: ``[150]``, not the converted ``(150,)``."""
    return repr(list(value) if isinstance(value, tuple) else value)


def _fail(source: str, key: str, value: Any, expected: str) -> ParamsError:
    return ParamsError(f"{source}: {key} = {_shown(value)} is not allowed: expected {expected}")


def _convert(value: Any, kind: Any, key: str, source: str) -> Any:
    origin = get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return _convert_dataclass(value, kind, key, source)
    if origin is Literal:
        if value not in get_args(kind):
            raise _fail(source, key, value, _describe(kind))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(kind):
            return None  # an explicit null is null, not an optional section's defaults
        errors = []
        for option in get_args(kind):
            try:
                return _convert(value, option, key, source)
            except ParamsError as error:
                errors.append(error)
        raise _fail(source, key, value, _describe(kind))
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _fail(source, key, value, _describe(kind))
        item_kind = get_args(kind)[0]
        items = [_convert(v, item_kind, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _fail(source, key, value, _describe(kind))
        key_kind, value_kind = get_args(kind)
        for k, v in value.items():
            if v is None and dataclasses.is_dataclass(value_kind):
                raise _fail(source, f"{key}.{k}", v, _describe(value_kind))
        return {
            _convert(k, key_kind, f"{key} key", source): _convert(v, value_kind, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if kind is type(None):
        if value is not None:
            raise _fail(source, key, value, "null")
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise _fail(source, key, value, "true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, key, value, "an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(source, key, value, "a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise _fail(source, key, value, "a string")
        return value
    if kind is Any:
        return value
    raise TypeError(f"config type {kind!r} of {key} is not supported")


def _convert_dataclass(value: Any, cls: type[T], key: str, source: str) -> T:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise _fail(source, key, value, _describe(cls))
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f" (did you mean {key}.{close[0]}?)" if close else ""
        raise ParamsError(
            f"{source}: unknown key {key}.{unknown[0]}{hint}; allowed keys of {key}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name not in value:
            if (
                field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING  # type: ignore[misc]
            ):
                raise ParamsError(f"{source}: missing key {key}.{name} ({_describe(hints[name])})")
            continue
        converted = _convert(value[name], hints[name], f"{key}.{name}", source)
        kwargs[name] = _check_metadata(converted, field, f"{key}.{name}", source)
    try:
        return cls(**kwargs)
    except ValueError as error:  # a check across keys in __post_init__ (ParamsError is a ValueError)
        message = str(error)
        raise ParamsError(message if message.startswith(f"{source}:") else f"{source}: {message}") from error


def _check_metadata(value: Any, field: dataclasses.Field, key: str, source: str) -> Any:
    meta = field.metadata
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if not isinstance(item, int | float) or isinstance(item, bool):
            continue
        if "min" in meta and item < meta["min"]:
            raise _fail(source, key, value, f"a value >= {meta['min']}")
        if "max" in meta and item > meta["max"]:
            raise _fail(source, key, value, f"a value <= {meta['max']}")
    if "check" in meta:
        try:
            return meta["check"](value)
        except ValueError as error:
            # a mapping's repr would show its converted dataclasses: the check's message names the entry
            shown = "" if isinstance(value, Mapping) else f" = {_shown(value)}"
            raise ParamsError(f"{source}: {key}{shown} is not allowed: {error}") from error
    return value


def check_distinct(values: tuple[T, ...], noun: str, *, empty: str | None = None) -> tuple[T, ...]:
    """A list ``check``: no value twice ("a <noun> is listed twice"); with ``empty`` (the message), not
    empty either."""
    if empty is not None and not values:
        raise ValueError(empty)
    if len(set(values)) != len(values):
        raise ValueError(f"a {noun} is listed twice")
    return values


def check_blocks(blocks: tuple[str | float, ...], arch: str | None = None) -> tuple[str, ...]:
    """A ``check`` for block lists: normalise to ``2.1`` form, reject repeated names and blocks that
    ``arch`` (default: the model.arch of the params being loaded) lacks. YAML reads an unquoted 2.1 as a
    float; str() gives the block name back."""
    from rsi.taps import block_names, parse_block

    arch = arch or params_arch()
    for block in blocks:
        if isinstance(block, float) and f"{block}0" in block_names(arch):
            raise ValueError(
                f"{block} is ambiguous in {arch}: YAML reads an unquoted 3.10 as 3.1; write layerL_K "
                "(e.g. layer3_10) or quote the name"
            )
    return check_distinct(tuple(parse_block(str(b), arch) for b in blocks), "block")


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-able data (tuples become lists), for settings files."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(obj))


# ------------------------------------------------------------------------ keys read by several stages
# The top-level seed, criteria.blocks, natural.blocks, activations.scale_fraction and the --block argument
# are read by stages that do not compute with the section that owns them (activations measures
# criteria.blocks without testing Eq. 1 or 2; ablate needs only the blocks natural measured; natural-criteria
# applies S at the fraction of activations), so they are read here, below every stage: a stage's DVC deps
# stay the modules it computes with.


def load_seed(raw: Mapping[str, Any], *, source: str = "params.yaml") -> int:
    """The top-level ``seed`` (default 0): keys every random draw of the FZ, natural and ablate stages."""
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParamsError(f"{source}: seed = {seed!r} is not allowed: expected an integer >= 0")
    return seed


# criteria.blocks and natural.blocks when params.yaml names none: the paper's probed blocks, 1.1 to 4.1
PROBED_BLOCKS: tuple[str, ...] = ("1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1")


def check_probed_blocks(blocks: tuple[Any, ...]) -> tuple[str, ...]:
    """The ``check`` of criteria.blocks: at least one block, each known to the params' model.arch."""
    if not blocks:
        raise ValueError("list at least one block")
    return check_blocks(blocks)


@dataclasses.dataclass(frozen=True)
class _ProbedBlocks:
    blocks: tuple[str | float, ...] = dataclasses.field(
        default=PROBED_BLOCKS,
        metadata={"check": check_probed_blocks, "help": "blocks probed (paper: 1.1 to 4.1); 2.1 or layer2_1"},
    )


def load_keys(raw: Mapping[str, Any], name: str, cls: type[T], *, source: str = "params.yaml") -> T:
    """The keys of section ``name`` that ``cls`` declares, as :func:`load_section` loads them; the other
    keys of the section are left to the section's own dataclass (cli validates the whole file first)."""
    section = raw.get(name)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    only = {k: v for k, v in section.items() if k in names} if isinstance(section, Mapping) else section
    return load_section({**raw, name: only}, name, cls, source=source)


def probed_blocks(raw: Mapping[str, Any], *, source: str = "params.yaml") -> tuple[str, ...]:
    """criteria.blocks of a params mapping (the blocks whose channels are probed), checked as
    rsi.criteria.CriteriaParams checks it, without the rest of the criteria section."""
    return load_keys(raw, "criteria", _ProbedBlocks, source=source).blocks


@dataclasses.dataclass(frozen=True)
class _NaturalBlocks:
    blocks: tuple[str | float, ...] = dataclasses.field(
        default=PROBED_BLOCKS, metadata={"check": check_blocks}
    )


def natural_blocks(raw: Mapping[str, Any], *, source: str = "params.yaml") -> tuple[str, ...]:
    """natural.blocks of a params mapping (the blocks whose natural-image statistics stage natural
    measures), checked as rsi.natural_params.NaturalParams checks it, without the rest of the natural section."""
    return load_keys(raw, "natural", _NaturalBlocks, source=source).blocks


def check_fraction(value: float) -> float:
    """The ``check`` of a fraction of the image side, such as activations.scale_fraction (S's crop)."""
    if not 0.0 < value <= 1.0:
        raise ValueError("expected a fraction of the image side in (0, 1]")
    return value


# activations.scale_fraction when params.yaml names none: paper §3, S(X) center-crops 112 of 224
SCALE_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class _ScaleFraction:
    scale_fraction: float = dataclasses.field(default=SCALE_FRACTION, metadata={"check": check_fraction})


def load_scale_fraction(raw: Mapping[str, Any], *, source: str = "params.yaml") -> float:
    """activations.scale_fraction of a params mapping (S(X): center-crop this fraction), checked as
    rsi.activations.ActivationsParams checks it, without the rest of the activations section."""
    return load_keys(raw, "activations", _ScaleFraction, source=source).scale_fraction


def blocks_argument(value: str) -> str:
    """The argparse ``type`` of a ``--block`` that also takes ``all`` (every configured block)."""
    return value if value == "all" else block_argument(value)


def block_argument(value: str) -> str:
    """The argparse ``type`` of ``--block``: a block name in ``2.1`` form from ``2.1`` or ``layer2_1``."""
    import argparse

    from rsi.taps import parse_block

    try:
        return parse_block(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
