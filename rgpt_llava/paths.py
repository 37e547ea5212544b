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


def _flag_names(parser) -> Dict[str, str]:
    """``{dest: how the user typed it}``: the first option string (``--image-file``), or a positional's metavar."""
    names = {}
    for action in getattr(parser, "_actions", ()):
        names[action.dest] = action.option_strings[0] if action.option_strings else (
            action.metavar if isinstance(action.metavar, str) else action.dest)
    return names


def args_output_clash(parser, args, outputs: Sequence[str]) -> Optional[str]:
    """:func:`output_clash` for parsed arguments: every output (``outputs``: argument names) against every file that
    another argument names and that exists now -- the command's inputs, derived rather than listed, so a new input
    flag is covered without editing a list."""
    names = _flag_names(parser)
    flag = lambda dest: names.get(dest) or "--" + dest.replace("_", "-")  # noqa: E731

    def files(value):
        values = value if isinstance(value, (list, tuple)) else [value]
        return [p for p in values if isinstance(p, (str, os.PathLike)) and os.path.isfile(p)]
    return output_clash({flag(k): getattr(args, k, None) for k in outputs},
                        {flag(k): files(v) for k, v in vars(args).items() if k not in outputs})


def parse_args_checked(parser, argv=None, outputs: Sequence[str] = ("out",)):
    """``parser.parse_args(argv)``, then the parser's error (exit 2, one line) if an output is a file that another
    argument names: ``--out`` over ``--result-file`` would replace the answers with their metrics."""
    args = parser.parse_args(argv)
    clash = args_output_clash(parser, args, outputs)
    if clash:
        parser.error(clash)
    return args
