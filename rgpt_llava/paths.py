"""Output paths checked against the inputs of the same command, before anything is read or written."""
import argparse
import os
from typing import Dict, Optional, Sequence, Union

PathArg = Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def output_clash(outputs: Dict[str, PathArg], inputs: Dict[str, PathArg],
                 folder: Optional[str] = None) -> Optional[str]:
    """Why an output would replace an input or another output (``{flag: path or paths}``; None and "" skipped), or
    None: e.g. ``describe --png photo.jpg --image-file photo.jpg`` would write over the photo it reads.

    The outputs are files, or with ``folder`` (what is written there, e.g. "the new checkpoint") folders: a
    converter's --output may not be the folder of the checkpoint it reads."""
    def items(named):
        for flag, value in named.items():
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if path:
                    yield flag, os.path.realpath(path), path
    thing = "folder" if folder else "file"
    seen = {}
    for flag, real, path in items(outputs):
        for other_flag, other_real, _ in items(inputs):
            if real == other_real:
                if folder:
                    return (f"{flag} {path} is the {other_flag} folder: writing {folder} there would replace it; "
                            f"choose another folder")
                return f"{flag} {path} is also {other_flag}: writing there would replace it; choose another file"
        if real in seen:
            return f"{flag} {path} is also {seen[real]}: two outputs in one {thing}; choose another {thing}"
        seen[real] = flag
    return None


def _flag_names(parser, names: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``{dest: how the user typed it}``: the first option string (``--image-file``), a positional's metavar or, as
    positionals here name the files read, "an input"; the subcommands' arguments too."""
    names = {} if names is None else names
    for action in getattr(parser, "_actions", ()):
        if action.option_strings:
            names.setdefault(action.dest, action.option_strings[0])
        elif isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _flag_names(sub, names)
        else:
            names.setdefault(action.dest, action.metavar if isinstance(action.metavar, str) else "an input")
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
