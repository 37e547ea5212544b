"""LLaVA's ``mm_utils`` extended with region placeholders (tokenisation) and region geometry (re-exported)."""
import re
from typing import List, Optional

import torch

from rgpt_llava.constants import IMAGE_TOKEN_INDEX, REGION_PLACEHOLDER_PATTERN, REGION_TOKEN_INDEX

_PLACEHOLDER = re.compile(r"(<image>|" + REGION_PLACEHOLDER_PATTERN + r")")


def region_references(prompt: str) -> List[int]:
    """0-based region index of every region placeholder in ``prompt``, in order of appearance.

    ``<region>`` takes the supplied regions in order (the k-th plain placeholder is region k); ``<regionN>`` names the
    N-th supplied region (1-based, as in the paper's figures).
    """
    refs, plain = [], 0
    for match in re.finditer(REGION_PLACEHOLDER_PATTERN, prompt):
        number = match.group(1)
        if number:
            if int(number) < 1:
                raise ValueError(f"placeholder {match.group(0)!r} is invalid: regions are numbered from 1")
            refs.append(int(number) - 1)
        else:
            refs.append(plain)
            plain += 1
    return refs


def check_region_references(prompt: str, num_regions: int, require_all: bool = True) -> List[int]:
    """Validate the prompt's placeholders against the number of supplied regions; return ``region_references``.

    Every placeholder must name a supplied region; with ``require_all`` every supplied region must be referenced.
    """
    refs = region_references(prompt)
    too_far = sorted({r + 1 for r in refs if r >= num_regions})
    if too_far:
        raise ValueError(f"the prompt refers to region(s) {too_far} but {num_regions} region(s) were supplied")
    if require_all:
        unused = sorted(set(range(1, num_regions + 1)) - {r + 1 for r in refs})
        if unused:
            raise ValueError(f"{num_regions} region(s) were supplied but region(s) {unused} are not referenced by "
                             f"any <region> / <regionN> placeholder in the prompt")
    return refs


def tokenizer_region_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX,
                           region_token_index: int = REGION_TOKEN_INDEX, return_tensors: Optional[str] = None):
    """LLaVA's ``tokenizer_image_token`` extended to ``<region>`` / ``<regionN>``.

    Text between placeholders is tokenised chunk by chunk exactly as LLaVA does (each chunk on its own, the BOS of
    every chunk but the first dropped), so a prompt without regions gives LLaVA's ids. Each region placeholder becomes
    one sentinel ``region_token_index - k`` for region k (0-based).
    """
    refs = iter(region_references(prompt))
    parts = _PLACEHOLDER.split(prompt)
    # re.split with two groups yields: text, placeholder, region-number-group, text, ...
    texts, sentinels = parts[0::3], []
    for placeholder in parts[1::3]:
        sentinels.append(image_token_index if placeholder == "<image>" else region_token_index - next(refs))

    input_ids = []
    for i, text in enumerate(texts):
        ids = tokenizer(text).input_ids
        if i == 0:
            input_ids.extend(ids)
        else:
            input_ids.extend(ids[1:] if ids and ids[0] == tokenizer.bos_token_id else ids)
        if i < len(sentinels):
            input_ids.append(sentinels[i])

    if return_tensors is not None:
        if return_tensors == "pt":
            return torch.tensor(input_ids, dtype=torch.long)
        raise ValueError(f"Unsupported tensor type: {return_tensors}")
    return input_ids


def __getattr__(name):
    # Region geometry lives in its own module; re-export it lazily so mm_utils mirrors LLaVA's layout.
    if name in ("process_regions", "parse_region", "transform_box", "Region"):
        from rgpt_llava import geometry
        return getattr(geometry, name)
    raise AttributeError(name)
