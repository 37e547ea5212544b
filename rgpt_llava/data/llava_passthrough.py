"""LLaVA image-level data (LCS-558K ``blip_laion_cc_sbu_558k.json``, ``llava_v1_5_mix665k.json``) copied through.

Samples are written unchanged (but for an optional ``--image-prefix``); each is checked with :func:`rgpt_llava.data.common.check_sample` (a
``conversations`` list of ``{"from": "human"|"gpt", "value"}``, ``image`` a string when present, no region
placeholder without regions). A bad sample is a counted skip with a warning. A file that already holds RGPT samples
(with ``regions``) passes too, its placeholders checked, so this is also a validator for built files.
"""
from __future__ import annotations

from typing import List, Optional

from rgpt_llava.data.common import Stats, check_sample, image_path, iter_progress, load_json, require


def convert(path: str, image_prefix: str = "", stats: Optional[Stats] = None) -> List[dict]:
    """The file's valid samples; with ``image_prefix`` their ``image`` paths are prefixed (e.g.
    ``LLaVA-Pretrain/images`` for LCS-558K, whose paths are relative to its own folder, so it can be merged with data
    whose paths are relative to ``playground/data``); nothing else changes."""
    stats = stats or Stats("llava")
    data = load_json(path, "LLaVA conversation JSON")
    require(isinstance(data, list), path, f"expected a JSON list of LLaVA samples, got a {type(data).__name__}")
    out = []
    for i, sample in enumerate(iter_progress(data, "llava: samples")):
        problem = check_sample(sample)
        if problem:
            sid = sample.get("id", "?") if isinstance(sample, dict) else "?"
            stats.skip("invalid sample", f"sample #{i} (id {sid})", problem)
            continue
        if image_prefix and "image" in sample:
            sample = dict(sample, image=image_path(image_prefix, sample["image"]))
        out.append(sample)
    stats.info["files"] += 1
    stats.info["samples"] += len(data)
    stats.info["with image"] += sum(1 for s in out if "image" in s)
    stats.info["text-only"] += sum(1 for s in out if "image" not in s)
    stats.info["with regions"] += sum(1 for s in out if s.get("regions"))
    return out
