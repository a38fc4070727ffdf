"""PyTorch's caching-allocator settings (`PYTORCH_ALLOC_CONF`): the record, and its parser.

The parser follows PyTorch's `lexArgs` and `parseArgs`: every key current PyTorch accepts parses, and
a value PyTorch would refuse at CUDA start is refused here instead. This module is a leaf (it imports
only `schema` and `errors`); `autotune.config` re-exports what its callers use.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from autotune import schema
from autotune.errors import ConfigError
from autotune.schema import Problems

__all__ = ["ALLOC_CONF_VARS", "AllocatorConfig", "effective_alloc_conf", "roundup_table"]

_MiB = 1 << 20

# PyTorch reads PYTORCH_ALLOC_CONF first and falls back to the older PYTORCH_CUDA_ALLOC_CONF, which
# newer versions warn about; versions before the rename read only the older name. Setting both to
# one value reaches every version.
ALLOC_CONF_VARS: tuple[str, ...] = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
_MIN_SPLIT_MB = 20                 # kLargeBuffer / 1 MiB: the smallest max_split_size_mb PyTorch takes
_MAX_REGISTER_THREADS = 128        # pinned_max_register_threads()
_TRUE_FALSE = ("True", "False")    # PyTorch accepts exactly these spellings, and fails at CUDA start otherwise
_DEVICES = ("cuda", "hip", "device")   # PyTorch accepts the CUDA, ROCm and device-neutral spellings


def _passthrough_keys() -> dict[str, str]:
    """Keys that change nothing the simulator models, with the kind of value PyTorch wants."""
    keys = {"backend": "backend", "pinned_num_register_threads": "threads",
            "pinned_use_background_threads": "bool", "pinned_reserve_segment_size_mb": "int",
            "graph_capture_record_stream_reuse": "bool"}
    for dev in _DEVICES:
        keys[f"release_lock_on_{dev}malloc"] = "bool"
        keys[f"release_lock_on_{dev}_malloc"] = "bool"
        keys[f"pinned_use_{dev}_host_register"] = "bool"
    return keys


_PASSTHROUGH = _passthrough_keys()


@dataclass(frozen=True, kw_only=True)
class AllocatorConfig:
    """PyTorch CUDA caching-allocator settings (`PYTORCH_ALLOC_CONF`, formerly `PYTORCH_CUDA_ALLOC_CONF`).

    The same record configures the real allocator (through the environment, before CUDA starts) and
    the simulator in `autotune.memory.allocator`. Every key current PyTorch accepts parses; the ones
    that change what the simulator models get a field, the rest (`backend`, `release_lock_on_cudamalloc`,
    `pinned_*`, `graph_capture_record_stream_reuse`) are kept verbatim in `passthrough` and reach the
    trial's environment unchanged.
    """

    expandable_segments: bool = False
    max_split_size_mb: int | None = None
    garbage_collection_threshold: float | None = None
    # One division count for every size, or PyTorch's per-interval list, e.g. "[64:8,256:4,>:1]".
    roundup_power2_divisions: int | str | None = None
    # Per-process memory fraction (torch.cuda.set_per_process_memory_fraction, or the
    # `per_process_memory_fraction` key); the GC threshold only acts under one.
    memory_fraction: float | None = None
    # A request >= max_split_size takes a cached block at most this much bigger (default 20 MiB).
    max_non_split_rounding_mb: int | None = None
    passthrough: str = ""

    def problems(self) -> Problems:
        yield from schema.non_finite(self)
        for key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            value = getattr(self, key)
            if value is not None and value < _MIN_SPLIT_MB:
                yield key, f"must be at least {_MIN_SPLIT_MB} (PyTorch's minimum), got {value}"
        if self.garbage_collection_threshold is not None and not 0.0 < self.garbage_collection_threshold < 1.0:
            yield "garbage_collection_threshold", f"must be in (0, 1), got {self.garbage_collection_threshold}"
        try:
            self.roundup_intervals()
        except ValueError as exc:
            yield "roundup_power2_divisions", str(exc)
        if self.memory_fraction is not None and not 0.0 <= self.memory_fraction <= 1.0:
            yield "memory_fraction", f"must be in [0, 1], got {self.memory_fraction}"
        try:
            _parse_pairs(self.passthrough, allowed=_PASSTHROUGH)
        except ValueError as exc:
            yield "passthrough", str(exc)

    @property
    def max_split_size_bytes(self) -> int | None:
        return None if self.max_split_size_mb is None else self.max_split_size_mb * _MiB

    @property
    def max_non_split_rounding_bytes(self) -> int:
        return (self.max_non_split_rounding_mb or _MIN_SPLIT_MB) * _MiB

    @property
    def backend(self) -> str:
        """`native` (the caching allocator autotune simulates) or `cudaMallocAsync`."""
        return dict(_parse_pairs(self.passthrough, allowed=_PASSTHROUGH)).get("backend", "native")

    def roundup_intervals(self) -> tuple[int, ...]:
        """The 16 division counts PyTorch keeps, for sizes [1 MiB, 2 MiB), [2, 4), ... up to >= 32 GiB.

        0 means no power-of-two rounding. Raises ValueError on a malformed or non-power-of-two value.
        """
        return roundup_table(self.roundup_power2_divisions)

    def to_env_string(self) -> str:
        """The `PYTORCH_ALLOC_CONF` value; empty when everything is PyTorch's default.

        `memory_fraction` is left out: PyTorch before 2.10 rejects `per_process_memory_fraction`, so
        the CUDA probe sets it through `torch.cuda.set_per_process_memory_fraction` instead.
        """
        parts = []
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.max_split_size_mb is not None:
            parts.append(f"max_split_size_mb:{self.max_split_size_mb}")
        if self.max_non_split_rounding_mb is not None:
            parts.append(f"max_non_split_rounding_mb:{self.max_non_split_rounding_mb}")
        if self.garbage_collection_threshold is not None:
            parts.append(f"garbage_collection_threshold:{self.garbage_collection_threshold}")
        if self.roundup_power2_divisions is not None:
            parts.append(f"roundup_power2_divisions:{self.roundup_power2_divisions}")
        if self.passthrough:
            parts.append(self.passthrough)
        return ",".join(parts)

    @classmethod
    def from_env_string(cls, text: str, *, source: str = "PYTORCH_ALLOC_CONF") -> AllocatorConfig:
        """Parse allocator-config syntax ("key:value,key:value"), as PyTorch's `parseArgs` does.

        Raises:
            ConfigError: naming every malformed pair, unknown key or bad value.
        """
        problems: list[str] = []
        try:
            pairs = _parse_pairs(text, allowed={**_MODELLED, **_PASSTHROUGH})
        except ValueError as exc:
            raise ConfigError(str(exc), source=source) from None
        values: dict[str, object] = {}
        passthrough = []
        for key, raw in pairs:
            if key in _PASSTHROUGH:
                passthrough.append(f"{key}:{raw}")
                continue
            field_name, convert = _MODELLED[key]
            try:
                values[field_name] = convert(raw)
            except ValueError:
                problems.append(f"{key}: cannot parse {raw!r}")
        if passthrough:
            values["passthrough"] = ",".join(passthrough)
        if problems:
            raise ConfigError(problems, source=source)
        return schema.from_dict(cls, values, source=source)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> AllocatorConfig:
        """The settings PyTorch would use: `PYTORCH_ALLOC_CONF`, else `PYTORCH_CUDA_ALLOC_CONF`."""
        for name in ALLOC_CONF_VARS:
            if name in environ:
                return cls.from_env_string(environ[name], source=name)
        return cls()


def effective_alloc_conf(environ: Mapping[str, str]) -> str:
    """The allocator string PyTorch reads from `environ` (the primary variable wins)."""
    return next((environ[name] for name in ALLOC_CONF_VARS if name in environ), "")


def _roundup_value(raw: str) -> int | str:
    return raw if raw.startswith("[") else int(raw)


def _true_false(raw: str) -> bool:
    if raw not in _TRUE_FALSE:
        raise ValueError(raw)
    return raw == "True"


_MODELLED: dict[str, tuple[str, Callable[[str], object]]] = {
    "expandable_segments": ("expandable_segments", _true_false),
    "max_split_size_mb": ("max_split_size_mb", int),
    "max_non_split_rounding_mb": ("max_non_split_rounding_mb", int),
    "garbage_collection_threshold": ("garbage_collection_threshold", float),
    "roundup_power2_divisions": ("roundup_power2_divisions", _roundup_value),
    "per_process_memory_fraction": ("memory_fraction", float),
}


def _lex(text: str) -> list[str]:
    """PyTorch's `lexArgs`: `,` `:` `[` `]` are tokens of their own; spaces are dropped."""
    tokens, word = [], ""
    for ch in text:
        if ch in ",:[]":
            if word:
                tokens.append(word)
                word = ""
            tokens.append(ch)
        elif ch != " ":
            word += ch
    return tokens + ([word] if word else [])


def _parse_pairs(text: str, *, allowed: Mapping[str, object]) -> list[tuple[str, str]]:
    """(key, raw value) pairs in order; a bracketed list comes back as its text, e.g. "[64:8,>:1]".

    Raises:
        ValueError: a malformed pair, an unknown key, or a passthrough value PyTorch would refuse.
    """
    tokens, pairs, i = _lex(text), [], 0
    while i < len(tokens):
        key = tokens[i]
        if key == ",":
            i += 1
            continue
        if key not in allowed:
            known = sorted(k for k in allowed if not k.startswith(("pinned_use_", "release_lock_on_")))
            raise ValueError(f"unknown key {key!r} (PyTorch's allocator takes {', '.join(known)}, "
                             "release_lock_on_cudamalloc and pinned_use_cuda_host_register)")
        if i + 2 >= len(tokens) or tokens[i + 1] != ":" or tokens[i + 2] in ",:]":
            raise ValueError(f"{key!r} is not of the form key:value")
        i += 2
        if tokens[i] == "[":
            close = tokens.index("]", i) if "]" in tokens[i:] else -1
            if close < 0:
                raise ValueError(f"{key}: a '[' without its ']'")
            raw, i = "".join(tokens[i:close + 1]), close + 1
        else:
            raw, i = tokens[i], i + 1
        _check_passthrough(key, raw)
        pairs.append((key, raw))
    return pairs


def _check_passthrough(key: str, raw: str) -> None:
    kind = _PASSTHROUGH.get(key)
    if kind == "bool" and raw not in _TRUE_FALSE:
        raise ValueError(f"{key} takes True or False, got {raw!r}")
    if kind == "backend" and raw not in ("native", "cudaMallocAsync"):
        raise ValueError(f"backend takes native or cudaMallocAsync, got {raw!r}")
    if kind in ("int", "threads"):
        if not raw.isdigit():
            raise ValueError(f"{key} takes a whole number, got {raw!r}")
        if kind == "threads" and not (_power_of_two(int(raw)) and int(raw) <= _MAX_REGISTER_THREADS):
            raise ValueError(f"{key} must be a power of two up to {_MAX_REGISTER_THREADS}, got {raw}")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


_ROUNDUP_INTERVALS = 16     # kRoundUpPowerOfTwoIntervals: [1 MiB, 2 MiB) ... [32 GiB, 64 GiB) and above


def roundup_table(value: int | str | None) -> tuple[int, ...]:
    """PyTorch's `roundup_power2_divisions` table (one count per power-of-two interval from 1 MiB).

    An int fills every interval. The list form "[64:8,256:4,>:1]" sets the interval that starts at
    64 MiB (and every smaller one, as the first entry does) to 8, the one at 256 MiB to 4, and every
    interval after the last named one to 1 (`>`), following c10/test/core/AllocatorConfig_test.cpp.

    Raises:
        ValueError: a count or an interval that is not a power of two (counts may also be 0).
    """
    table = [0] * _ROUNDUP_INTERVALS
    if value is None:
        return tuple(table)
    if isinstance(value, int):
        if not _power_of_two(value):
            raise ValueError(f"must be a power of two, got {value}")
        return (value,) * _ROUNDUP_INTERVALS
    tokens = [t for t in _lex(value) if t not in ("[", "]")]
    entries, i = [], 0
    while i < len(tokens):
        if tokens[i] == ",":
            i += 1
            continue
        if i + 2 >= len(tokens) or tokens[i + 1] != ":":
            raise ValueError(f"{value!r}: expected interval:divisions entries")
        entries.append((tokens[i], tokens[i + 2]))
        i += 3
    last, first = -1, True
    for interval, raw in entries:
        if not raw.isdigit() or not (int(raw) == 0 or _power_of_two(int(raw))):
            raise ValueError(f"{value!r}: divisions must be a power of two or 0, got {raw!r}")
        divisions = int(raw)
        if interval == ">":
            table[last + 1:] = [divisions] * (_ROUNDUP_INTERVALS - last - 1)
            continue
        if not interval.isdigit() or not _power_of_two(int(interval)):
            raise ValueError(f"{value!r}: intervals must be powers of two (MiB) or '>', got {interval!r}")
        index = min(int(interval).bit_length() - 1, _ROUNDUP_INTERVALS - 1)
        if first:
            table[:index] = [divisions] * index
            first = False
        table[index] = divisions
        last = index
    return tuple(table)
