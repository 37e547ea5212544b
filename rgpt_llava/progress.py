"""Progress bars: tqdm on stderr, shown only on a terminal (logs and tests stay clean)."""
import sys
from typing import Iterable, Optional


def iter_progress(items: Iterable, desc: str, total: Optional[int] = None):
    from tqdm import tqdm
    return tqdm(items, desc=desc, total=total, disable=None, file=sys.stderr, dynamic_ncols=True)
