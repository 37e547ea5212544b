"""Progress bars: tqdm on stderr, shown only on a terminal (logs and tests stay clean)."""
import sys
from typing import Iterable, Optional


def iter_progress(items: Iterable, desc: str, total: Optional[int] = None):
    from tqdm import tqdm
    return tqdm(items, desc=desc, total=total, disable=None, file=sys.stderr, dynamic_ncols=True)


def progress_bar(desc: str, total: int, initial: int = 0, unit: str = "it"):
    """A bar advanced by hand (``bar.update(n)``), for work done in batches; ``initial``: already done (a resumed
    run's bar starts there)."""
    from tqdm import tqdm
    return tqdm(desc=desc, total=total, initial=initial, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)
