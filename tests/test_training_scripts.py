"""The training scripts (scripts/rgpt/*.sh) run as a user runs them, on tiny models, with the venv running pytest:
both launchers, both stages, LoRA and QLoRA, and the choice of attention."""
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from test_train import env, load_and_answer, log_losses  # noqa: F401  (env: tiny base LLM, CLIP tower, images, data)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Small settings as a CPU user passes them: a couple of steps, every step saved, no accumulation, no dataloader
# workers, and no bf16 (transformers >= 4.4x refuses it without a GPU unless --use_cpu is given).
SMALL = ["--max_steps", "2", "--save_steps", "1", "--gradient_accumulation_steps", "1", "--bf16", "False",
         "--dataloader_num_workers", "0"]
ATTENTION_LINE = re.compile(r"^attention: (\S+) \((.+)\)$", re.M)
FLASH_ATTN_INSTALLED = importlib.util.find_spec("flash_attn") is not None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(name, env, out, *extra, **variables):
    """``bash scripts/rgpt/<name> <SMALL> <extra>`` from the repository root, the tiny models given through the
    scripts' environment variables and this venv's ``python`` and ``deepspeed`` first on PATH."""
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("LAUNCHER", "RGPT_ATTN", "DRY_RUN", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE")}
    script_env = dict(inherited, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", GPUS="1",
                      PER_DEVICE_BATCH="1", MODEL_BASE=env.base, VISION_TOWER=env.clip, DATA_PATH=env.good,
                      IMAGE_FOLDER=env.images, OUTPUT_DIR=str(out))
    if variables.get("LAUNCHER") != "python":  # the DeepSpeed launcher's port: a free one, other runs may share it
        script_env["MASTER_PORT"] = str(free_port())
    # DeepSpeed compiles its CPU communication op on first use (about a minute on 2 cores) into one cache per user;
    # two venvs sharing it rebuild it at every switch of stack. One cache per venv builds it once.
    script_env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / ".torch_extensions"))
    script_env.update({k: str(v) for k, v in variables.items()})
    proc = subprocess.run(["bash", f"scripts/rgpt/{name}", *SMALL, *map(str, extra)], cwd=ROOT, env=script_env,
                          capture_output=True, text=True, timeout=600)
    return SimpleNamespace(rc=proc.returncode, log=proc.stdout + proc.stderr)


def trained(run):
    assert run.rc == 0, run.log[-4000:]
    return run


def attention_said_once(log):
    said = ATTENTION_LINE.findall(log)
    assert len(said) == 1, said
    return said[0]


def region_modules(path):
    return {module for key in torch.load(path, map_location="cpu") for module in ("mm_projector", "mm_refiner")
            if f".{module}." in key}


@pytest.fixture(scope="module")
def stage1(env):
    """pretrain.sh with LAUNCHER=python: one plain process (it used to crash at the first checkpoint save)."""
    out = env.root / "script_stage1"
    run = trained(run_script("pretrain.sh", env, out, "--save_total_limit", "2", LAUNCHER="python"))
    return SimpleNamespace(out=out, log=run.log)


def test_python_launcher_pretrains_and_saves_every_checkpoint(stage1):
    checkpoints = sorted(stage1.out.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    for ckpt in checkpoints + [stage1.out]:
        assert region_modules(ckpt / "mm_projector.bin") == {"mm_projector", "mm_refiner"}, ckpt
    for ckpt in checkpoints:
        assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file(), ckpt
        assert not list(ckpt.glob("global_step*")), f"{ckpt}: DeepSpeed ran in the plain process"
    losses, steps = log_losses(stage1.out)
    assert steps == 2 and len(losses) == 2
    assert json.load(open(stage1.out / "config.json"))["mm_refiner_type"] == "deconv"
    choice, why = attention_said_once(stage1.log)
    if not FLASH_ATTN_INSTALLED:
        assert (choice, why) == ("sdpa", "flash_attn is not installed")


def test_python_launcher_with_an_explicit_deepspeed_runs_deepspeed_in_one_process(env):
    out = env.root / "script_stage1_ds"
    trained(run_script("pretrain.sh", env, out, "--deepspeed", "./scripts/zero2.json", LAUNCHER="python"))
    assert list((out / "checkpoint-2").glob("global_step*")), "no DeepSpeed checkpoint"
    assert region_modules(out / "checkpoint-2" / "mm_projector.bin") == {"mm_projector", "mm_refiner"}
    assert region_modules(out / "mm_projector.bin") == {"mm_projector", "mm_refiner"}


def test_deepspeed_launcher_finetunes_stage2_without_flash_attn(env, stage1):
    out = env.root / "script_stage2"
    run = trained(run_script("finetune.sh", env, out, PRETRAIN_ADAPTER=stage1.out / "mm_projector.bin"))
    assert "ImportError" not in run.log
    choice, why = attention_said_once(run.log)
    if not FLASH_ATTN_INSTALLED:
        assert (choice, why) == ("sdpa", "flash_attn is not installed")
    assert list((out / "checkpoint-2").glob("global_step*")), "the script's ZeRO-3 config was not used"
    losses, steps = log_losses(out)
    assert steps == 2 and len(losses) == 2
    model = load_and_answer(out)
    # stage 2 started from the stage-1 refiner (two steps at lr 2e-5 move it little)
    s1 = torch.load(stage1.out / "mm_projector.bin")["model.mm_refiner.up2.weight"]
    assert torch.allclose(model.get_model().mm_refiner.up2.weight, s1, atol=0.05)


@pytest.mark.parametrize("name,variables", [
    ("finetune_lora.sh", dict(LAUNCHER="python", RGPT_ATTN="eager")),  # the override, on the plain launcher
    ("finetune_qlora.sh", {}),  # its own default launcher: python
])
def test_lora_scripts_save_adapters_with_projector_and_refiner(env, stage1, name, variables):
    out = env.root / f"script_{name[:-3]}"
    run = trained(run_script(name, env, out, "--lora_r", "8", "--lora_alpha", "16",
                             PRETRAIN_ADAPTER=stage1.out / "mm_projector.bin", **variables))
    if "RGPT_ATTN" in variables:
        assert attention_said_once(run.log) == ("eager", "RGPT_ATTN=eager")
    else:
        attention_said_once(run.log)
    for folder in (out, out / "checkpoint-2"):
        assert (folder / "adapter_model.safetensors").is_file(), folder
        assert region_modules(folder / "non_lora_trainables.bin") == {"mm_projector", "mm_refiner"}, folder
    if name == "finetune_qlora.sh":
        assert json.load(open(out / "config.json"))["quantization_config"]["load_in_4bit"] is True
    assert log_losses(out)[1] == 2
    load_and_answer(out, env.base)


@pytest.mark.skipif(FLASH_ATTN_INSTALLED, reason="needs a machine without flash_attn")
def test_attention_override_reaches_the_model(env):
    # forced where it cannot run, FlashAttention-2 is what transformers is asked to load, and refuses
    run = run_script("pretrain.sh", env, env.root / "script_fa2", RGPT_ATTN="flash_attention_2", LAUNCHER="python")
    assert run.rc != 0 and "flash_attn" in run.log and "ImportError" in run.log
    assert attention_said_once(run.log) == ("flash_attention_2", "RGPT_ATTN=flash_attention_2")


def test_a_bad_attention_override_is_refused_before_training(env):
    out = env.root / "script_bad_attn"
    run = run_script("pretrain.sh", env, out, RGPT_ATTN="flash")  # through the DeepSpeed launcher
    assert run.rc != 0
    assert "RGPT_ATTN='flash' is not an attention implementation; use one of flash_attention_2, sdpa, eager" in run.log
    assert "Traceback" not in run.log and not out.exists()


def test_missing_inputs_are_named_before_any_model_loads(env, tmp_path):
    """A new user's first run of a script: the defaults point at ./checkpoints and ./playground folders that are not
    there yet. Every missing input is named once, with the variable the script reads, even from two DeepSpeed
    processes; nothing is written. (LAUNCHER=python runs the same train(), checked first thing.)"""
    out = env.root / "script_missing"
    missing = dict(MODEL_BASE=tmp_path / "vicuna", VISION_TOWER=tmp_path / "clip", DATA_PATH=tmp_path / "d.json",
                   IMAGE_FOLDER=tmp_path / "images")
    run = run_script("finetune.sh", env, out, GPUS=2, PRETRAIN_ADAPTER=tmp_path, **missing)  # DeepSpeed launcher
    assert run.rc != 0 and "Traceback" not in run.log and not out.exists(), run.log[-3000:]
    for line in (f"error: --model_name_or_path {tmp_path / 'vicuna'}: no such folder (the training scripts "
                 "take it from MODEL_BASE)",
                 f"error: --vision_tower {tmp_path / 'clip'}: no such folder (the training scripts take it "
                 "from VISION_TOWER)",
                 f"error: --pretrain_mm_mlp_adapter {tmp_path}: a folder, not a file (the training scripts "
                 "take it from PRETRAIN_ADAPTER)",
                 f"error: --data_path {tmp_path / 'd.json'}: no such file (the training scripts take it from "
                 "DATA_PATH)",
                 f"error: --image_folder {tmp_path / 'images'}: no such folder (the training scripts take it "
                 "from IMAGE_FOLDER)"):
        assert run.log.count(line) == 1, (line, run.log[-3000:])


def test_a_hub_id_is_left_to_transformers():
    from rgpt_llava.train.train import input_errors
    model = SimpleNamespace(model_name_or_path="lmsys/vicuna-7b-v1.5", vision_tower="openai/clip-vit-large-patch14-336",
                            pretrain_mm_mlp_adapter=None)
    data = SimpleNamespace(data_path=__file__, image_folder=str(ROOT))
    assert input_errors(model, data) == []
    model.model_name_or_path = "./lmsys/vicuna-7b-v1.5"          # a relative path, not an id
    assert input_errors(model, data) == ["--model_name_or_path ./lmsys/vicuna-7b-v1.5: no such folder (the "
                                         "training scripts take it from MODEL_BASE)"]
