"""Sentinels and placeholder strings shared by tokenisation, data and the model."""
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, DEFAULT_IMAGE_TOKEN  # noqa: F401  (re-exported)

# Region placeholders become negative sentinel ids, like LLaVA's IMAGE_TOKEN_INDEX (no vocabulary change).
# The sentinel carries the region's index: id = REGION_TOKEN_INDEX - k for the k-th (0-based) supplied region,
# so an embedding always lands on its own placeholder, whatever truncation or padding happens around it.
REGION_TOKEN_INDEX = -300
DEFAULT_REGION_TOKEN = "<region>"

# `<region>` takes the supplied regions in order; `<regionN>` (1-based) names the N-th supplied region.
REGION_PLACEHOLDER_PATTERN = r"<region(\d*)>"

# Checkpoint files (LLaVA's names; RGPT adds the refiner to the first two), written by training, read by the builder.
STAGE1_FILE = "mm_projector.bin"                 # stage 1: projector + refiner
NON_LORA_FILE = "non_lora_trainables.bin"        # LoRA: projector + refiner beside the adapter
LORA_ADAPTER_FILE = "adapter_config.json"        # PEFT's marker of a LoRA checkpoint
