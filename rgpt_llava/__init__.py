"""rgpt_llava: RegionGPT (CVPR 2024) as a plugin for the LLaVA codebase.

``import rgpt_llava.model`` registers the ``rgpt_llama`` model type with transformers' Auto classes.
"""
__version__ = "0.1.0"
