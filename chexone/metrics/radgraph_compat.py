"""The one place that adapts the ``radgraph`` package (0.1.18) to this project: transformers 5 and offline loading.

What breaks, checked against the package's sources (docs/method.md §6):

1. ``radgraph.allennlp.data.tokenizers.PretrainedTransformerTokenizer`` calls ``tokenizer.encode_plus(...)`` and
   ``PretrainedTransformerIndexer`` calls ``tokenizer.build_inputs_with_special_tokens(ids)``; transformers 5 removed
   both (``BertTokenizer has no attribute encode_plus``). Fix: every tokenizer the package obtains through
   ``radgraph.allennlp.common.cached_transformers.get_tokenizer`` gets *instance* attributes: ``encode_plus``
   forwarding to ``tokenizer.__call__`` (same arguments, same single-sequence/pair output) and
   ``build_inputs_with_special_tokens`` wrapping ids in the special tokens that the tokenizer itself adds around
   one sequence or a pair (found by encoding dummy words, as the package's own probing does). No transformers class
   is modified.
2. The archive's ``config.json`` names the backbone (tokenizer + BERT config) by hub id, and
   ``cached_transformers.get`` / ``get_tokenizer`` load it with ``from_pretrained(hub_id)``. Fix: both functions are
   wrapped to map hub ids to local directories registered with :func:`register_backbone` (the backbone's weights
   come from the archive's ``weights.th``; only its config and tokenizer are read).
3. ``RadGraph(model_type, model_cache_dir)`` reads ``<model_cache_dir>/<model_type>/`` (``config.json``,
   ``vocabulary/``, ``weights.th``) and downloads the archive from the hub when that directory is empty. Fix:
   :func:`load_radgraph` points it at a local directory (or extracts a local ``.tar.gz`` archive) and never lets it
   reach the download branch.
4. Archives saved with transformers < 4.31 may hold ``*.embeddings.position_ids`` buffers that newer BERT modules do
   not persist; the package loads ``weights.th`` with ``strict=True``. Fix: while the model is built, such stale
   keys (and only those) are dropped when the module has no such key.
5. The package imports ``requests`` without declaring it (it is listed in the ``radgraph`` extra).

The wrappers are installed once, idempotently, when :func:`load_radgraph` (or :func:`install`) first runs. The
package version and the sources of the patched functions are pinned in ``SUPPORTED_VERSION`` / ``PATCHED_SOURCES``:
``tests/test_metrics_radgraph.py`` fails when the installed package differs, so an upgrade is re-checked here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import os
import tarfile
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PATCHED_SOURCES",
    "SUPPORTED_VERSION",
    "install",
    "installed_version",
    "load_radgraph",
    "register_backbone",
    "source_digests",
]

SUPPORTED_VERSION = "0.1.18"

#: sha256 of the package files whose behaviour this module relies on or wraps (radgraph 0.1.18 sdist).
PATCHED_SOURCES: dict[str, str] = {
    "radgraph.py": "81f0d92c85aa20657d0a9bcaf46131e716c4ad8acd228ff55b545dc95815862b",
    "allennlp/common/cached_transformers.py": "954fe49daeaa821bde638cf9dff9dc940db85d69e70bf0633db685fac1b89f12",
    "allennlp/data/tokenizers/pretrained_transformer_tokenizer.py": "ac00dd70db4b8e847b0f1831abaed1cc31de09a6ee6b54c741a851d130c89a5f",
    "allennlp/data/token_indexers/pretrained_transformer_indexer.py": "8aee31fe2f9d3f76fdff12e6fc6bf9cae8c2f53f2cf768733adfbd344fe66114",
    "utils.py": "b72dd396aedd3540df3f1c884324c671d59fe2ad56e18c8919de68570f708b51",
    "rewards.py": "9a80881d4185044fdbc585a37c9d232b34be3a50322eb66f47241aadb478340f",
}

MODEL_TYPES = ("radgraph", "radgraph-xl", "modern-radgraph-xl", "echograph")

_lock = threading.RLock()
_installed = False
#: hub id (as written in an archive's config.json) -> local directory with its config and tokenizer files
_BACKBONES: dict[str, str] = {}


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("radgraph")
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("radgraph")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("radgraph is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def source_digests() -> dict[str, str]:
    """sha256 of the installed package's files listed in ``PATCHED_SOURCES`` (without importing the package)."""
    root = _package_dir()
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in PATCHED_SOURCES}


def register_backbone(hub_id: str, local_dir: str | os.PathLike) -> None:
    """Load the backbone that archives name ``hub_id`` from ``local_dir`` instead of the hub."""
    with _lock:
        _BACKBONES[str(hub_id)] = os.path.expanduser(str(local_dir))


def _local(name: str) -> str:
    return _BACKBONES.get(name, name)


def _encode_plus(tokenizer: Any):
    def encode_plus(*args: Any, **kwargs: Any):
        return tokenizer(*args, **kwargs)

    return encode_plus


def _special_layout(tokenizer: Any) -> tuple[list[int], list[int], list[int], list[int]]:
    """(start, end) ids around one sequence and (start, mid, end) around a pair... returned as
    ``(single_start, single_end, pair_mid, pair_end)`` with the pair's start equal to ``single_start``; found by
    encoding dummy words, as radgraph's own tokenizer probing does."""
    for a, b in (("a", "b"), ("1", "2")):
        ia = tokenizer(a, add_special_tokens=False)["input_ids"]
        ib = tokenizer(b, add_special_tokens=False)["input_ids"]
        if len(ia) != 1 or len(ib) != 1 or ia == ib:
            continue
        single = tokenizer(a, add_special_tokens=True)["input_ids"]
        pair = tokenizer(a, b, add_special_tokens=True)["input_ids"]
        if single.count(ia[0]) != 1 or pair.count(ia[0]) != 1 or pair.count(ib[0]) != 1:
            continue
        i = single.index(ia[0])
        pa, pb = pair.index(ia[0]), pair.index(ib[0])
        if pair[:pa] != single[:i] or pb < pa:
            continue
        return single[:i], single[i + 1:], pair[pa + 1:pb], pair[pb + 1:]
    raise ValueError(f"cannot determine the special-token layout of {type(tokenizer).__name__}")


def _build_inputs_with_special_tokens(tokenizer: Any):
    layout: list[tuple] = []

    def build_inputs_with_special_tokens(token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        if not layout:
            layout.append(_special_layout(tokenizer))
        start, end, mid, pair_end = layout[0]
        if token_ids_1 is None:
            return start + list(token_ids_0) + end
        return start + list(token_ids_0) + mid + list(token_ids_1) + pair_end

    return build_inputs_with_special_tokens


def install() -> None:
    """Install the wrappers (idempotent). Imports the package (several seconds: it imports its own allennlp)."""
    global _installed
    with _lock:
        if _installed:
            return
        version = installed_version()
        if version is None:
            raise ImportError("radgraph is not installed: pip install 'chexone[radgraph]'")
        if version != SUPPORTED_VERSION:
            warnings.warn(
                f"radgraph {version} is installed; chexone.metrics.radgraph_compat was written for "
                f"{SUPPORTED_VERSION}. Check the fixes listed in that module still apply.",
                RuntimeWarning,
                stacklevel=2,
            )
        from radgraph.allennlp.common import cached_transformers as ct

        original_get = ct.get
        original_get_tokenizer = ct.get_tokenizer

        def get(model_name: str, make_copy: bool, *args: Any, **kwargs: Any):
            return original_get(_local(model_name), make_copy, *args, **kwargs)

        def get_tokenizer(model_name: str, **kwargs: Any):
            tok = original_get_tokenizer(_local(model_name), **kwargs)
            if not hasattr(tok, "encode_plus"):
                object.__setattr__(tok, "encode_plus", _encode_plus(tok))
            if not hasattr(tok, "build_inputs_with_special_tokens"):
                object.__setattr__(tok, "build_inputs_with_special_tokens", _build_inputs_with_special_tokens(tok))
            return tok

        get.__wrapped__ = original_get  # type: ignore[attr-defined]
        get_tokenizer.__wrapped__ = original_get_tokenizer  # type: ignore[attr-defined]
        ct.get = get
        ct.get_tokenizer = get_tokenizer
        _installed = True


@contextlib.contextmanager
def _tolerate_stale_position_ids() -> Iterator[None]:
    """Drop ``*embeddings.position_ids`` keys the module does not have while ``DyGIE`` loads ``weights.th``."""
    from radgraph.dygie.models.dygie import DyGIE

    original = DyGIE.load_state_dict

    def load_state_dict(self, state_dict, strict: bool = True, *args: Any, **kwargs: Any):
        own = self.state_dict()
        cleaned = {k: v for k, v in state_dict.items()
                   if not (k.endswith("embeddings.position_ids") and k not in own)}
        return original(self, cleaned, strict, *args, **kwargs)

    DyGIE.load_state_dict = load_state_dict
    try:
        yield
    finally:
        DyGIE.load_state_dict = original


def _find_model_root(directory: Path) -> Path | None:
    """The directory holding ``config.json`` + ``weights.th``: ``directory`` itself or one level below."""
    if (directory / "config.json").is_file() and (directory / "weights.th").is_file():
        return directory
    if directory.is_dir():
        for sub in sorted(directory.iterdir()):
            if sub.is_dir() and (sub / "config.json").is_file() and (sub / "weights.th").is_file():
                return sub
    return None


def _extract(archive: Path, cache_root: Path) -> Path:
    st = archive.stat()
    tag = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = cache_root / f"{archive.name.split('.')[0]}-{tag}"
    done = dest / ".extracted"
    if not done.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
        done.touch()
    return dest


def _staging_dir(model_root: Path, model_type: str) -> Path:
    """A ``model_cache_dir`` whose ``<model_type>`` entry is ``model_root`` (the package joins the two)."""
    if model_root.name == model_type:
        return model_root.parent
    stage = Path(tempfile.mkdtemp(prefix="chexone-radgraph-"))
    os.symlink(model_root, stage / model_type, target_is_directory=True)
    return stage


def model_root_for(model_dir: str | os.PathLike, *, cache_root: str | os.PathLike | None = None) -> Path:
    """The extracted model directory for a directory or a ``.tar.gz`` archive (extracted under ``cache_root``)."""
    p = Path(os.path.expanduser(str(model_dir)))
    if p.is_file():
        from chexone.cache import cache_root as default_cache_root

        root = Path(os.path.expanduser(str(cache_root))) if cache_root else default_cache_root()
        p = _extract(p, root / "radgraph")
    found = _find_model_root(p)
    if found is None:
        raise FileNotFoundError(f"{p} holds no RadGraph model (config.json + weights.th + vocabulary/)")
    return found


def load_radgraph(model_dir: str | os.PathLike, *, model_type: str = "radgraph", backbone_dir: str | None = None,
                  device: str | None = None, cache_root: str | os.PathLike | None = None, quiet: bool = True):
    """Build ``radgraph.RadGraph`` (the package's own class and inference code) from a local model directory or
    archive, with the backbone named in its ``config.json`` read from ``backbone_dir`` when given.

    The caller checks that the files exist first (``chexone.metrics.radgraph.RadGraphAnnotator`` does, fast).
    """
    import json

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r}; radgraph knows {', '.join(MODEL_TYPES)}")
    root = model_root_for(model_dir, cache_root=cache_root)
    if backbone_dir is not None:
        cfg = json.loads((root / "config.json").read_text())
        names = {
            cfg.get("dataset_reader", {}).get("token_indexers", {}).get("bert", {}).get("model_name"),
            cfg.get("model", {}).get("embedder", {}).get("token_embedders", {}).get("bert", {}).get("model_name"),
        }
        for name in names - {None}:
            register_backbone(name, backbone_dir)
    install()
    from radgraph import RadGraph

    cuda = -1
    if device is not None and str(device).startswith("cuda"):
        cuda = int(str(device).split(":")[1]) if ":" in str(device) else 0
    stage = _staging_dir(root, model_type)
    out = io.StringIO()
    with _tolerate_stale_position_ids(), (contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext()):
        model = RadGraph(model_type=model_type, model_cache_dir=str(stage), cuda=cuda)
    return model
