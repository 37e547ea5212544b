"""rgpt_llava: RegionGPT (CVPR 2024) as a plugin for the LLaVA codebase.

``import rgpt_llava.model`` registers the ``rgpt_llama`` model type with transformers' Auto classes.
"""
__version__ = "0.1.0"


def _pil_image_processors_without_torchvision():
    """transformers 5 without torchvision: its ``CLIPImageProcessor`` / ``SamImageProcessor`` names fall back to the
    PIL backends (what 4.x had) with a warning on stderr at first use, which LLaVA's imports trigger in every command.
    Take the PIL classes directly (what the warning itself advises), so commands' stderr stays theirs."""
    import importlib.metadata
    import importlib.util
    try:
        if int(importlib.metadata.version("transformers").split(".")[0]) < 5:
            return
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return
    if importlib.util.find_spec("torchvision") is not None:
        return
    import sys
    import transformers
    for name in ("CLIPImageProcessor", "SamImageProcessor"):
        try:
            pil = getattr(transformers, name + "Pil")
        except (AttributeError, ImportError):
            continue
        # the first lazy import replaces sys.modules["transformers"]: set the name where later imports look
        setattr(sys.modules["transformers"], name, pil)


_pil_image_processors_without_torchvision()
