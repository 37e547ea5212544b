"""User regions: every kind in one table (:mod:`.kinds`), the :class:`Region` they parse to (:mod:`.region`), the
builders that rasterise them (:mod:`.rasterize`) and the prompts SAM turns into masks (:mod:`.prompts`).

Where a region's pixels land in LLaVA's processed image is :mod:`rgpt_llava.geometry`; running SAM is
:mod:`rgpt_llava.sam`. Neither is imported here, so both may import this package.
"""
from rgpt_llava.regions.kinds import (KINDS, ParseContext, RegionKind, needs_sam, parse_region, register_kind,
                                      unregister_kind)
from rgpt_llava.regions.prompts import SamPrompt, SamRequired, require_sam
from rgpt_llava.regions.region import Region

__all__ = ["KINDS", "ParseContext", "Region", "RegionKind", "SamPrompt", "SamRequired", "needs_sam", "parse_region",
           "register_kind", "require_sam", "unregister_kind"]
