"""Where image and region embeddings land in a token sequence: the ONE splice.

Training and ``generate`` (``RGPTMetaForCausalLM.prepare_inputs_labels_for_multimodal``) and the shared-prefix
generation that evaluation, the CLI and the servers use (``rgpt_llava.generation``) both call :func:`splice`, so the two
can never disagree about a position.

- A region sentinel ``REGION_TOKEN_INDEX - k`` is replaced IN PLACE by region k's embedding: the sequence length does
  not change and the label there is ignored.
- Each image sentinel expands into the next image's ``H*W`` tokens (LLaVA's convention: images are consumed in
  order), with ignored labels.
"""
from typing import Optional, Sequence, Tuple

import torch

from rgpt_llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX


def is_sentinel(ids: torch.Tensor) -> torch.Tensor:
    """Positions of image and region sentinels (ids that are not vocabulary entries)."""
    return (ids == IMAGE_TOKEN_INDEX) | (ids <= REGION_TOKEN_INDEX)


def embed_text(embed_tokens, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings of ``ids`` (any shape), sentinels embedded as token 0 until :func:`splice` replaces them."""
    return embed_tokens(ids.masked_fill(is_sentinel(ids), 0))


def count_images(ids: torch.Tensor) -> int:
    return int((ids == IMAGE_TOKEN_INDEX).sum())


def splice(ids: torch.Tensor, embeds: torch.Tensor, images: Sequence[torch.Tensor],
           regions: Optional[torch.Tensor], labels: Optional[torch.Tensor] = None,
           where: str = "") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One sequence: ``ids`` [L], ``embeds`` [L, D] (from :func:`embed_text`), ``images`` the image token blocks
    [H*W, D] for this sequence's image sentinels in order, ``regions`` [R, D] (or None), ``labels`` [L] (or None).

    Returns (embeddings [L', D], labels [L'] or None). ``where`` prefixes error messages (e.g. "sample 3: ").
    """
    reg = ids <= REGION_TOKEN_INDEX
    if bool(reg.any()):
        idx = REGION_TOKEN_INDEX - ids[reg]
        n_regions = 0 if regions is None else regions.shape[0]
        if int(idx.max()) >= n_regions:
            raise ValueError(f"{where}the prompt refers to <region{int(idx.max()) + 1}> but {n_regions} "
                             f"region(s) were supplied")
        embeds = embeds.index_put((reg.nonzero().squeeze(1),), regions[idx].to(embeds.dtype))
        if labels is not None:
            labels = labels.masked_fill(reg, IGNORE_INDEX)
    img_pos = (ids == IMAGE_TOKEN_INDEX).nonzero().squeeze(1).tolist()
    if not img_pos:
        return embeds, labels
    if len(img_pos) > len(images):
        raise ValueError(f"{where}more <image> placeholders ({len(img_pos)}) than images supplied ({len(images)})")
    pieces_e, pieces_l, start = [], [], 0
    for pos, tokens in zip(img_pos, images):
        pieces_e += [embeds[start:pos], tokens.to(embeds.dtype)]
        if labels is not None:
            pieces_l += [labels[start:pos], labels.new_full((tokens.shape[0],), IGNORE_INDEX)]
        start = pos + 1
    pieces_e.append(embeds[start:])
    if labels is not None:
        pieces_l.append(labels[start:])
        labels = torch.cat(pieces_l)
    return torch.cat(pieces_e), labels
