"""The paper's instruction pools (supplementary Tables 21-25) and task-guided prompts (Table 1), with seeded sampling.

The prompts live verbatim in ``instructions.json`` next to this module (placeholders normalised to ASCII
``<region>``). Templates are filled with explicit ``<regionN>`` placeholders by the converters::

    pools = load_pools()
    rng = random.Random("0/coco/391895")
    q = fill(pools.sample("category", rng), regions=["<region1>"]) + " " + category_suffix("COCO-80")
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence

__all__ = [
    "TASKS",
    "Pools",
    "load_pools",
    "fill",
    "region_list",
    "region_placeholder",
    "category_suffix",
    "rec_suffix",
    "rec_answer",
    "no_match_answer",
]

INSTRUCTIONS_FILE = Path(__file__).with_name("instructions.json")

# pool name -> (table, number of prompts, placeholder counts): what the paper lists, checked when the file is loaded.
TASKS = {
    "brief_caption": ("Table 21", 43, {"<region>": 1}),
    "detailed_description": ("Table 22", 10, {"<region>": 1}),
    "relationship": ("Table 23", 10, {"<region>": 2}),
    "category": ("Table 24", 15, {"<region>": 1}),
    "rec": ("Table 25", 15, {"<region>": 1, "<description>": 1}),
}
REGION = "<region>"
DESCRIPTION = "<description>"


@dataclass(frozen=True)
class Pools:
    """The instruction pools (``prompts[task]`` is a tuple of templates) and the Table 1 task-guided strings."""
    prompts: Dict[str, tuple]
    tables: Dict[str, str]
    category_suffix: str
    rec_suffix: str
    rec_answer: str
    no_match_answer: str

    def sample(self, task: str, rng: random.Random) -> str:
        """One template of ``task``'s pool, chosen by ``rng`` (uniformly)."""
        if task not in self.prompts:
            raise KeyError(f"unknown instruction pool {task!r}; known: {sorted(self.prompts)}")
        return rng.choice(self.prompts[task])


def _check(data: dict, path: Path) -> Pools:
    pools = data.get("pools")
    guided = data.get("task_guided")
    if not isinstance(pools, dict) or not isinstance(guided, dict):
        raise ValueError(f"{path}: expected top-level 'pools' and 'task_guided' objects")
    prompts, tables = {}, {}
    for task, (table, count, placeholders) in TASKS.items():
        entry = pools.get(task)
        if not isinstance(entry, dict) or not isinstance(entry.get("prompts"), list):
            raise ValueError(f"{path}: pool {task!r} ({table}) is missing or has no 'prompts' list")
        items = entry["prompts"]
        if len(items) != count:
            raise ValueError(f"{path}: pool {task!r} ({table}) has {len(items)} prompts, the paper lists {count}")
        for i, text in enumerate(items):
            for ph in (REGION, DESCRIPTION):
                want = placeholders.get(ph, 0)
                if text.count(ph) != want:
                    raise ValueError(f"{path}: {task} prompt {i + 1} has {text.count(ph)} {ph} placeholder(s), "
                                     f"expected {want}: {text!r}")
        prompts[task], tables[task] = tuple(items), entry.get("table", table)
    try:
        return Pools(prompts=prompts, tables=tables, category_suffix=guided["category_suffix"],
                     rec_suffix=guided["rec_suffix"], rec_answer=guided["rec_answer"],
                     no_match_answer=guided["no_match_answer"])
    except KeyError as e:
        raise ValueError(f"{path}: 'task_guided' lacks {e.args[0]!r}") from None


@lru_cache(maxsize=None)
def _load(path: str) -> Pools:
    p = Path(path)
    with open(p, encoding="utf-8") as f:
        return _check(json.load(f), p)


def load_pools(path: Optional[str] = None) -> Pools:
    """The pools from ``instructions.json`` (or ``path``), validated: prompt counts 43/10/10/15/15 and placeholders."""
    return _load(str(path or INSTRUCTIONS_FILE))


def region_placeholder(number: int) -> str:
    """``<regionN>`` for the 1-based region number ``N``."""
    if number < 1:
        raise ValueError(f"regions are numbered from 1, got {number}")
    return f"<region{number}>"


def region_list(placeholders: Sequence[str]) -> str:
    """The paper's way of listing regions: ``"<region1>, <region2>, <region3> and <region4>"``."""
    items = list(placeholders)
    if not items:
        raise ValueError("cannot list zero regions")
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def fill(template: str, regions: Sequence[str], description: Optional[str] = None) -> str:
    """Replace the template's ``<region>`` placeholders, in order, by ``regions`` (one string per placeholder, e.g.
    ``"<region2>"`` or a :func:`region_list`), and ``<description>`` by ``description``."""
    parts = template.split(REGION)
    if len(parts) - 1 != len(regions):
        raise ValueError(f"template has {len(parts) - 1} {REGION} placeholder(s) but {len(regions)} region "
                         f"string(s) were given: {template!r}")
    out = parts[0] + "".join(r + p for r, p in zip(regions, parts[1:]))
    if DESCRIPTION in out:
        if description is None:
            raise ValueError(f"template needs a {DESCRIPTION}: {template!r}")
        out = out.replace(DESCRIPTION, description)
    elif description is not None:
        raise ValueError(f"template has no {DESCRIPTION} placeholder: {template!r}")
    return out


def category_suffix(vocab: str, pools: Optional[Pools] = None) -> str:
    """Table 1: ``"Answer the question using COCO-80 category names."`` for ``vocab="COCO-80"``."""
    return (pools or load_pools()).category_suffix.format(vocab=vocab)


def rec_suffix(pools: Optional[Pools] = None) -> str:
    """Table 1: ``"Answer the question using the template Region [x]."``"""
    return (pools or load_pools()).rec_suffix


def rec_answer(index: int, pools: Optional[Pools] = None) -> str:
    """``"Region [x]"`` with ``x`` the 1-based position of the match among the listed candidates."""
    return (pools or load_pools()).rec_answer.format(index=index)


def no_match_answer(pools: Optional[Pools] = None) -> str:
    """Table 1: ``"No corresponding options found."``"""
    return (pools or load_pools()).no_match_answer

