"""The research tests run only when asked: ``bash scripts/test.sh research/tests`` (the default run collects tests/)."""
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if "research" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.research)


@pytest.fixture(scope="session")
def real_tokenizer_dir():
    from rgpt_llava.assets import llama_tokenizer_dir
    return str(llama_tokenizer_dir())
