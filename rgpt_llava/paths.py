"""Output paths checked against the inputs of the same command, before anything is read or written."""
import os
from typing import Dict, Optional, Sequence, Union

PathArg = Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def output_clash(outputs: Dict[str, PathArg], inputs: Dict[str, PathArg]) -> Optional[str]:
    """Why an output would replace an input or another output (``{flag: path or paths}``; None and "" skipped), or
    None: e.g. ``describe --png photo.jpg --image-file photo.jpg`` would write over the photo it reads."""
    def items(named):
        for flag, value in named.items():
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if path:
                    yield flag, os.path.realpath(path), path
    seen = {}
    for flag, real, path in items(outputs):
        for other_flag, other_real, _ in items(inputs):
            if real == other_real:
                return f"{flag} {path} is also {other_flag}: writing there would replace it; choose another file"
        if real in seen:
            return f"{flag} {path} is also {seen[real]}: two outputs in one file; choose another file"
        seen[real] = flag
    return None
