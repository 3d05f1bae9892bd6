"""Run keys: the BLAKE3 digest of everything that determines a stage run's result.

The key covers the command after templating, the stage's working folder,
each declared dependency's workspace path and digest, each declared param's
file, key and value, and the output paths. Each part is a set that is
sorted before encoding, so the key does not depend on declaration order or
on dict ordering, and removing a dependency or a param changes it.

Encoding, version 1: the magic `b"expfs-runkey"`, a version byte, then the
sections in a fixed order, each a tagged value:

    None     b"N"               bool     b"T" / b"F"
    int      b"I" len digits    float    b"D" 8 bytes IEEE 754 big-endian
    str      b"S" len UTF-8     list     b"L" count items
    mapping  b"M" count (key, value) pairs sorted by encoded key
    set      b"E" count items sorted by encoding
    date, time, datetime        b"t" len ISO 8601 text

`len` and `count` are u64 big-endian. Tuples encode as lists. A float is
never equal to an int here (`1` and `1.0` give different keys), because a
params file that changes `1` to `1.0` may change what a program does.
"""

from __future__ import annotations

import datetime
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import blake3

from expfs.pipeline.stage import Stage
from expfs.store.trees import Digest

RUN_KEY_VERSION = 1
_MAGIC = b"expfs-runkey"
_LENGTH = struct.Struct(">Q")
_FLOAT = struct.Struct(">d")
_CANONICAL_NAN = struct.pack(">Q", 0x7FF8000000000000)


def run_key(
    cmd: str | Sequence[str],
    deps: Mapping[str, Digest],
    params: Mapping[str, Mapping[str, Any]],
    outs: Sequence[str],
    *,
    wdir: str = ".",
) -> Digest:
    """Return the run key of a stage run.

    `deps` maps each dependency's workspace path to its digest, `params`
    maps each params file to the value of each declared key (a whole-file
    dependency lists every top-level key), and `outs` lists the output
    workspace paths. A string `cmd` and a one-item list are the same run.
    """
    commands = [cmd] if isinstance(cmd, str) else list(cmd)
    document = {
        "cmd": commands,
        "wdir": wdir,
        "deps": {path: str(digest) for path, digest in deps.items()},
        "params": {file: dict(values) for file, values in params.items()},
        "outs": set(outs),
    }
    return Digest(blake3.blake3(encode_run_inputs(document)).hexdigest())


def encode_run_inputs(document: Mapping[str, Any]) -> bytes:
    """Encode the inputs of a run canonically (the bytes that `run_key` hashes)."""
    parts = [_MAGIC, bytes([RUN_KEY_VERSION])]
    _encode(document, parts)
    return b"".join(parts)


def encode_value(value: Any) -> bytes:
    """Encode one value canonically, so equal values of one type give equal bytes."""
    parts: list[bytes] = []
    _encode(value, parts)
    return b"".join(parts)


def _encode(value: Any, out: list[bytes]) -> None:
    if value is None:
        out.append(b"N")
    elif isinstance(value, bool):
        out.append(b"T" if value else b"F")
    elif isinstance(value, int):
        _text(b"I", str(value), out)
    elif isinstance(value, float):
        packed = _CANONICAL_NAN if math.isnan(value) else _FLOAT.pack(value)
        out.append(b"D" + packed)
    elif isinstance(value, str):
        _text(b"S", value, out)
    elif isinstance(value, datetime.date | datetime.time):
        _text(b"t", value.isoformat(), out)
    elif isinstance(value, Mapping):
        pairs = sorted((encode_value(k), encode_value(v)) for k, v in value.items())
        out.append(b"M" + _LENGTH.pack(len(pairs)))
        out.extend(key + item for key, item in pairs)
    elif isinstance(value, set | frozenset):
        items = sorted(encode_value(item) for item in value)
        out.append(b"E" + _LENGTH.pack(len(items)))
        out.extend(items)
    elif isinstance(value, list | tuple):
        out.append(b"L" + _LENGTH.pack(len(value)))
        for item in value:
            _encode(item, out)
    else:
        raise TypeError(
            f"cannot encode a {type(value).__name__} in a run key: {value!r}"
        )


def _text(tag: bytes, text: str, out: list[bytes]) -> None:
    data = text.encode("utf-8", "surrogateescape")
    out.append(tag + _LENGTH.pack(len(data)) + data)


def stage_run_key(
    stage: Stage,
    dep_digests: Mapping[str, Digest],
    param_values: Mapping[str, Mapping[str, Any]],
) -> Digest:
    """Return the run key of `stage` given its inputs' digests and params.

    `dep_digests` maps each dependency's workspace path to its digest and
    `param_values` maps each params file's workspace path to its declared
    keys and values. Every declared dependency must have a digest.
    """
    missing = [dep.path for dep in stage.deps if dep.workspace_path not in dep_digests]
    if missing:
        raise KeyError(f"no digest for dependencies {missing} of stage {stage.name!r}")
    deps = {dep.workspace_path: dep_digests[dep.workspace_path] for dep in stage.deps}
    return run_key(
        stage.cmd,
        deps,
        param_values,
        [out.workspace_path for out in stage.outs],
        wdir=stage.workspace_wdir,
    )
