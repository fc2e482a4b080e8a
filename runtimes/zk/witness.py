"""Witness generation from a circom circuit's ``.wasm`` and an input JSON, in-process through wasmtime.

This follows the calculator circom 2 writes next to the ``.wasm`` (``<circuit>_js/witness_calculator.js``):
inputs are addressed by the 64-bit FNV-1a hash of their qualified name ("a", "a.b", "a[0].b"), field
elements cross the boundary as n32 little-endian 32-bit words through the module's shared memory
(``writeSharedRWMemory`` / ``readSharedRWMemory``), ``setInputSignal`` runs the circuit once the last input
is set, and ``getWitness(i)`` reads signal i back.

The wasm comes from a requester, so it runs under a fuel budget (instructions, roughly): a generator that
loops forever fails with ``WitnessGenerationFailed`` instead of holding a worker.

wasmtime is optional: without it, a task must bring its witness as a ``.wtns``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import Any

from runtimes.zk.exceptions import MalformedInput, WitnessGenerationFailed
from runtimes.zk.field import R

# Enough for circuits of a few million constraints (a 2^12-constraint chain used under 10^7 units);
# the bound exists to stop runaway loops, not to meter honest work.
DEFAULT_FUEL = 20_000_000_000
_ERRORS = {
    1: "signal not found",
    2: "too many signals set",
    3: "signal already set",
    4: "assert failed",
    5: "not enough memory",
    6: "input signal array access exceeds the size",
    7: "out of bounds array access",
}


def wasmtime_available() -> bool:
    """Whether wasmtime is installed, without importing it (~4 MiB the daemon would keep while idle)."""
    return importlib.util.find_spec("wasmtime") is not None


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for ch in name:
        h ^= ord(ch)
        h = (h * 0x100000001B3) % (1 << 64)
    return h


def flatten_inputs(inputs: Mapping[str, Any]) -> dict[str, list[int]]:
    """{qualified signal name: values}, as witness_calculator.js's qualify_input flattens an input JSON."""
    out: dict[str, list[int]] = {}

    def scalars(value: Any) -> list[Any] | None:
        if isinstance(value, list):
            flat: list[Any] = []
            for item in value:
                inner = scalars(item)
                if inner is None:
                    return None
                flat.extend(inner)
            return flat
        return None if isinstance(value, Mapping) else [value]

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
            return
        flat = scalars(value)
        if flat is not None:
            out[prefix] = [_field_element(v, prefix) for v in flat]
            return
        for i, item in enumerate(value):  # a list of objects: name[i].field
            walk(f"{prefix}[{i}]", item)

    if not isinstance(inputs, Mapping):
        raise MalformedInput(f"input JSON: expected an object of signal names, got {type(inputs).__name__}")
    walk("", inputs)
    return out


def _field_element(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedInput(f"input JSON: signal {name!r}: {value!r} is not an integer or a decimal string")
    try:
        return int(value) % R
    except ValueError as exc:
        raise MalformedInput(f"input JSON: signal {name!r}: {value!r} is not an integer") from exc


def calculate_witness(wasm: bytes, inputs: Mapping[str, Any], *, fuel: int = DEFAULT_FUEL) -> list[int]:
    """The full witness (signal 0 is the constant 1) for these inputs."""
    try:
        wasmtime = importlib.import_module("wasmtime")
    except ImportError as exc:
        raise WitnessGenerationFailed(
            "computing a witness from a .wasm needs the wasmtime package", hint="pip install wasmtime, or send a .wtns"
        ) from exc
    signals = flatten_inputs(inputs)
    config = wasmtime.Config()
    config.consume_fuel = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    store.set_fuel(fuel)
    try:
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise MalformedInput(f"witness generator: not a valid WebAssembly module: {str(exc).splitlines()[0]}") from exc

    messages: list[str] = []
    exports: dict[str, Any] = {}

    def message() -> str:
        chars = []
        while (c := exports["getMessageChar"](store)) != 0:
            chars.append(chr(c))
        return "".join(chars)

    def exception_handler(code: int) -> None:
        detail = "; ".join(m for m in messages if m)
        raise WitnessGenerationFailed(
            f"witness generator: {_ERRORS.get(code, f'error {code}')}" + (f" ({detail})" if detail else "")
        )

    def print_error() -> None:
        messages.append(message().strip())

    def ignore_message() -> None:
        message()  # log() output from the circuit: drained, not shown

    def show_memory() -> None:
        return None

    i32 = wasmtime.ValType.i32()
    host = {
        "exceptionHandler": wasmtime.Func(store, wasmtime.FuncType([i32], []), exception_handler),
        "printErrorMessage": wasmtime.Func(store, wasmtime.FuncType([], []), print_error),
        "writeBufferMessage": wasmtime.Func(store, wasmtime.FuncType([], []), ignore_message),
        "showSharedRWMemory": wasmtime.Func(store, wasmtime.FuncType([], []), show_memory),
    }
    imports = []
    for imp in module.imports:
        if imp.module != "runtime" or imp.name not in host:
            name = f"{imp.module}.{imp.name}"
            raise MalformedInput(f"witness generator: unexpected import {name} (not a circom 2 .wasm?)")
        imports.append(host[imp.name])
    try:
        instance = wasmtime.Instance(store, module, imports)
        for name in (
            "getFieldNumLen32", "getRawPrime", "readSharedRWMemory", "writeSharedRWMemory", "init",
            "getInputSignalSize", "setInputSignal", "getWitnessSize", "getWitness", "getInputSize", "getMessageChar",
        ):  # fmt: skip
            export = instance.exports(store).get(name)
            if export is None:
                raise MalformedInput(f"witness generator: export {name} is missing (not a circom 2 .wasm?)")
            exports[name] = export
        return _run(store, exports, signals)
    except wasmtime.Trap as exc:
        text = str(exc)
        if "fuel" in text:
            raise WitnessGenerationFailed(f"witness generator: ran past its budget of {fuel} fuel units") from exc
        raise WitnessGenerationFailed(f"witness generator trapped: {text.splitlines()[0]}") from exc
    except wasmtime.WasmtimeError as exc:
        # A host function's exception comes back wrapped; surface ours as it was raised.
        if isinstance(exc.__cause__, WitnessGenerationFailed):
            raise exc.__cause__ from None
        raise WitnessGenerationFailed(f"witness generator failed: {str(exc).splitlines()[0]}") from exc


def _run(store: Any, ex: Mapping[str, Any], signals: Mapping[str, list[int]]) -> list[int]:
    n32 = ex["getFieldNumLen32"](store)

    def read_word_array() -> int:
        # wasm i32 values arrive signed; the words are unsigned, least significant first.
        return sum((ex["readSharedRWMemory"](store, j) & 0xFFFFFFFF) << (32 * j) for j in range(n32))

    ex["getRawPrime"](store)
    prime = read_word_array()
    if prime != R:
        raise MalformedInput(f"witness generator: compiled for a {prime.bit_length()}-bit prime, not BN254's r")
    ex["init"](store, 0)
    count = 0
    for name, values in signals.items():
        h = fnv1a64(name)
        msb, lsb = _i32(h >> 32), _i32(h & 0xFFFFFFFF)
        size = ex["getInputSignalSize"](store, msb, lsb)
        if size <= 0:  # circom answers 0 (older versions -1) for a name it does not know
            raise WitnessGenerationFailed(f"input JSON: the circuit has no input signal {name!r}")
        if len(values) != size:
            raise WitnessGenerationFailed(f"input JSON: signal {name!r} takes {size} values, got {len(values)}")
        for i, value in enumerate(values):
            for j in range(n32):
                ex["writeSharedRWMemory"](store, j, _i32((value >> (32 * j)) & 0xFFFFFFFF))
            ex["setInputSignal"](store, msb, lsb, i)
            count += 1
    expected = ex["getInputSize"](store)
    if count < expected:
        raise WitnessGenerationFailed(f"input JSON: only {count} of the circuit's {expected} input values are set")
    witness = []
    for i in range(ex["getWitnessSize"](store)):
        ex["getWitness"](store, i)
        witness.append(read_word_array())
    return witness


def _i32(word: int) -> int:
    """An unsigned 32-bit word as the signed i32 wasmtime passes."""
    return word - (1 << 32) if word >= 1 << 31 else word
