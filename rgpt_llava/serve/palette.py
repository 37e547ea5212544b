"""The colours regions are shown in, region 1 first: one list for the web page (CSS hex) and ``describe``'s picture
(RGB), so region N has the same colour wherever it is drawn. Sasha Trubetskoy's 16 distinct colours."""
from typing import List, Tuple

HEX: List[str] = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
                  "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


def rgb(hex_colour: str) -> Tuple[int, int, int]:
    """``"#e6194b"`` -> ``(230, 25, 75)``."""
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


RGB: List[Tuple[int, int, int]] = [rgb(h) for h in HEX]


def hex_colour(number: int) -> str:
    """Region ``number``'s colour (1-based, as the page numbers regions), as CSS hex."""
    return HEX[(number - 1) % len(HEX)]


def rgb_colour(number: int) -> Tuple[int, int, int]:
    """Region ``number``'s colour (1-based), as RGB."""
    return RGB[(number - 1) % len(RGB)]
