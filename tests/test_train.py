"""Training through LLaVA's train(): both stages, LoRA, QLoRA, DeepSpeed, resume, and the region dataset."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

from rgpt_llava.constants import IGNORE_INDEX, REGION_TOKEN_INDEX

ROOT = Path(__file__).resolve().parents[1]


def draw_image(path, size, boxes):
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for (x, y, w, h), colour in boxes:
        d.rectangle((x, y, x + w - 1, y + h - 1), fill=colour)
    img.save(path)


GOOD = [
    {"id": "regions", "image": "a.png", "regions": [
        {"bbox": [10, 20, 60, 40]},
        {"bbox": [100, 30, 50, 50], "segmentation": [[100, 30, 150, 30, 150, 80, 100, 80]]}],
     "conversations": [{"from": "human", "value": "<image>\nwhat is <region1>?"}, {"from": "gpt", "value": "a red box"},
                       {"from": "human", "value": "and <region2>?"}, {"from": "gpt", "value": "a blue square"}]},
    {"id": "image-only", "image": "b.png",
     "conversations": [{"from": "human", "value": "<image>\ndescribe the image"},
                       {"from": "gpt", "value": "a green box on white"}]},
    {"id": "text-only", "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hello there"}]},
]
BAD = [
    {"id": "missing-image", "image": "nope.png", "regions": [{"bbox": [0, 0, 5, 5]}],
     "conversations": [{"from": "human", "value": "<image>\n<region1>?"}, {"from": "gpt", "value": "x"}]},
    {"id": "corrupt-image", "image": "corrupt.png",
     "conversations": [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "x"}]},
    {"id": "box-outside", "image": "a.png", "regions": [{"bbox": [150, 0, 100, 10]}],
     "conversations": [{"from": "human", "value": "<image>\n<region1>?"}, {"from": "gpt", "value": "x"}]},
    {"id": "region-missing", "image": "a.png", "regions": [{"bbox": [0, 0, 5, 5]}],
     "conversations": [{"from": "human", "value": "<image>\n<region2>?"}, {"from": "gpt", "value": "x"}]},
    {"id": "no-conversations", "image": "a.png"},
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_tokenizer_dir, tiny_clip_dir):
    from rgpt_llava.tiny import build_tiny_llm
    root = tmp_path_factory.mktemp("train")
    images = root / "images"
    images.mkdir()
    draw_image(images / "a.png", (200, 120), [((10, 20, 60, 40), "red"), ((100, 30, 50, 50), "blue")])
    draw_image(images / "b.png", (90, 160), [((20, 20, 40, 80), "green")])
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "data.json").write_text(json.dumps(GOOD + BAD))
    (root / "good.json").write_text(json.dumps(GOOD[:2]))
    base = build_tiny_llm(root / "base", tiny_tokenizer_dir)
    return SimpleNamespace(root=root, images=str(images), base=base, clip=tiny_clip_dir,
                           data=str(root / "data.json"), good=str(root / "good.json"))


def train_args(env, out, data=None, **flags):
    args = dict(model_name_or_path=env.base, version="v1", data_path=data or env.data, image_folder=env.images,
                vision_tower=env.clip, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad", output_dir=out,
                num_train_epochs=1, per_device_train_batch_size=2, learning_rate=1e-3, save_steps=2,
                logging_steps=1, report_to="none", model_max_length=512, dataloader_num_workers=0, seed=0,
                lr_scheduler_type="cosine", warmup_ratio=0.03, weight_decay=0.0)
    args.update(flags)
    out_args = []
    for k, v in args.items():
        out_args += [f"--{k}", str(v)]
    return out_args


def run(env, out, launcher=None, **flags):
    cmd = [sys.executable, "-m", "rgpt_llava.train.train"]
    if launcher == "deepspeed":
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--master_port",
               str(29500 + os.getpid() % 400), str(ROOT / "rgpt_llava" / "train" / "train.py")]
    proc = subprocess.run(cmd + train_args(env, str(out), **flags), capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def log_losses(out):
    state = json.load(open(Path(out) / "trainer_state.json"))
    return [e["loss"] for e in state["log_history"] if "loss" in e], state["global_step"]


def load_and_answer(path, base=None):
    from rgpt_llava.mm_utils import tokenizer_region_token
    from rgpt_llava.model.builder import load_pretrained_model

    tok, model, processor, _ = load_pretrained_model(str(path), base, device="cpu")
    masks = torch.zeros(1, 56, 56)
    masks[0, 10:30, 10:30] = 1
    ids = tokenizer_region_token("<image>\nwhat is <region1>?", tok, return_tensors="pt")[None]
    out = model.generate(ids, images=torch.randn(1, 3, 56, 56), region_masks=[masks], do_sample=False,
                         max_new_tokens=3)
    assert out.shape[1] >= 3
    return model


@pytest.fixture(scope="module")
def stage1(env):
    out = env.root / "stage1"
    proc = run(env, out, tune_mm_mlp_adapter=True, num_train_epochs=2)
    return SimpleNamespace(out=out, log=proc.stdout + proc.stderr)


def test_stage1_trains_projector_and_refiner_and_saves_both_every_checkpoint(env, stage1):
    assert "region masks: 16x16, the refined map's resolution" in stage1.log   # made so in the dataset's workers
    checkpoints = sorted(stage1.out.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]  # 6 usable samples, batch 2, 2 epochs
    for ckpt in checkpoints + [stage1.out]:
        state = torch.load(ckpt / "mm_projector.bin")
        assert {k.split(".")[1] for k in state} == {"mm_projector", "mm_refiner"}, ckpt
    for ckpt in checkpoints:
        assert (ckpt / "optimizer.pt").exists() and (ckpt / "scheduler.pt").exists()
    first = torch.load(checkpoints[0] / "mm_projector.bin")
    last = torch.load(stage1.out / "mm_projector.bin")
    assert not torch.equal(first["model.mm_refiner.up1.weight"], last["model.mm_refiner.up1.weight"])
    cfg = json.load(open(stage1.out / "config.json"))
    assert cfg["model_type"] == "rgpt_llama" and cfg["mm_refiner_type"] == "deconv"
    # the LLM stayed frozen: stage 1 saves no LLM weights at all
    assert not (stage1.out / "model.safetensors").exists()
    # bad samples were skipped, named, counted; the run did not crash
    assert "skipped samples:" in stage1.log
    skipped = [json.loads(line) for line in open(stage1.out / "skipped_samples.jsonl")]
    names = " ".join(s["sample"] for s in skipped)
    for bad in ("missing-image", "corrupt-image", "box-outside", "region-missing", "no-conversations"):
        assert bad in names, bad
    model = load_and_answer(stage1.out, env.base)
    assert torch.equal(model.get_model().mm_refiner.up1.weight, last["model.mm_refiner.up1.weight"])


@pytest.mark.parametrize("kind", ["full", "lora", "qlora"])
def test_stage2_outputs_load_with_the_builder(env, stage1, kind):
    flags = dict(pretrain_mm_mlp_adapter=stage1.out / "mm_projector.bin", learning_rate=2e-4, data=env.good,
                 save_steps=1)
    if kind != "full":
        flags.update(lora_enable=True, lora_r=8, lora_alpha=16)
    if kind == "qlora":
        flags.update(bits=4)
    out = env.root / f"stage2_{kind}"
    run(env, out, **flags)
    cfg = json.load(open(out / "config.json"))
    assert cfg["model_type"] == "rgpt_llama"
    if kind == "full":   # LLaVA's train() loaded (and the trainer saved) LLaVA-1.5's SentencePiece tokenizer
        tok_cfg = json.load(open(out / "tokenizer_config.json"))
        assert (out / "tokenizer.model").exists() and tok_cfg["tokenizer_class"] == "LlamaTokenizer"
        assert tok_cfg["legacy"] is False
    if kind == "qlora":  # trained in 4-bit (the config records it), loaded unquantised unless asked
        assert cfg["quantization_config"]["load_in_4bit"] is True
    if kind != "full":
        non_lora = torch.load(out / "non_lora_trainables.bin")
        assert any("mm_refiner" in k for k in non_lora) and any("mm_projector" in k for k in non_lora)
        assert (out / "checkpoint-1" / "non_lora_trainables.bin").exists()
    model = load_and_answer(out, env.base if kind != "full" else None)
    # stage 2 started from the stage-1 refiner
    s1 = torch.load(stage1.out / "mm_projector.bin")["model.mm_refiner.up2.weight"]
    assert torch.allclose(model.get_model().mm_refiner.up2.weight, s1, atol=0.05)
    load_and_answer(out / "checkpoint-1", env.base if kind != "full" else None)
    if kind == "lora":  # LLaVA's merge script, for RGPT
        merged = env.root / "merged"
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "rgpt" / "merge_lora_weights.py"),
                               "--model-path", str(out), "--model-base", env.base, "--save-model-path", str(merged)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        load_and_answer(merged)
        bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "rgpt" / "merge_lora_weights.py"),
                              "--model-path", str(merged), "--model-base", env.base, "--save-model-path",
                              str(env.root / "x")], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "not a LoRA checkpoint" in bad.stderr
        # never over its source, nor over a checkpoint without --overwrite
        for target, message in ((out, f"--save-model-path {out} is the --model-path folder"),
                                (merged, f"--save-model-path {merged} already holds a checkpoint")):
            bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "rgpt" / "merge_lora_weights.py"),
                                  "--model-path", str(out), "--model-base", env.base, "--save-model-path",
                                  str(target)], capture_output=True, text=True, timeout=300)
            assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
        from rgpt_llava.model.builder import describe_checkpoint
        assert (out / "adapter_config.json").exists() and describe_checkpoint(str(merged)) == "full"


def test_stage2_from_a_tied_llm_keeps_head_and_embeddings_one(env, stage1, tiny_tokenizer_dir):
    """A base Llama with tie_word_embeddings (research.pretrain_llm writes such) trains and reloads tied."""
    from safetensors.torch import load_file
    from rgpt_llava.tiny import build_tiny_llm
    base = build_tiny_llm(env.root / "tied_base", tiny_tokenizer_dir, tie_word_embeddings=True)
    before = load_file(Path(base) / "model.safetensors")["model.embed_tokens.weight"]
    out = env.root / "stage2_tied"
    run(env, out, model_name_or_path=base, pretrain_mm_mlp_adapter=stage1.out / "mm_projector.bin",
        learning_rate=1e-2, data=env.good, num_train_epochs=4)
    assert json.load(open(out / "config.json"))["tie_word_embeddings"] is True
    from rgpt_llava.model.builder import load_pretrained_model
    _, model, _, _ = load_pretrained_model(str(out), None, device="cpu")
    emb = model.get_input_embeddings().weight
    assert model.lm_head.weight is emb
    assert not torch.allclose(emb, before)   # trained, and the head with it


def test_loss_falls_on_a_fixed_batch(env):
    out = env.root / "overfit"
    run(env, out, data=env.good, num_train_epochs=25, learning_rate=3e-3, save_steps=1000, warmup_ratio=0.0,
        lr_scheduler_type="constant")
    losses, _ = log_losses(out)
    assert len(losses) == 25
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


def test_resume_continues_step_count_and_loss_curve(env):
    straight = env.root / "straight"
    run(env, straight, tune_mm_mlp_adapter=True, max_steps=4, save_steps=2, data=env.good,
        per_device_train_batch_size=1)
    resumed = env.root / "resumed"
    run(env, resumed, tune_mm_mlp_adapter=True, max_steps=4, save_steps=2, data=env.good,
        per_device_train_batch_size=1)
    # interrupt after step 2: keep only checkpoint-2, then run the same command again
    shutil.rmtree(resumed / "checkpoint-4")
    for f in ("mm_projector.bin", "trainer_state.json", "config.json"):
        (resumed / f).unlink()
    run(env, resumed, tune_mm_mlp_adapter=True, max_steps=4, save_steps=2, data=env.good,
        per_device_train_batch_size=1)
    a, steps_a = log_losses(straight)
    b, steps_b = log_losses(resumed)
    assert steps_a == steps_b == 4
    assert len(b) == 4 and b[2:] == pytest.approx(a[2:], abs=1e-4)  # steps 3-4 recomputed identically


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_launcher(env, stage1, zero):
    out = env.root / f"ds_{zero}"
    if zero == "zero2":  # stage 1 under ZeRO-2
        run(env, out, launcher="deepspeed", deepspeed=ROOT / "scripts" / "zero2.json", tune_mm_mlp_adapter=True,
            data=env.good)
        assert {k.split(".")[1] for k in torch.load(out / "mm_projector.bin")} == {"mm_projector", "mm_refiner"}
        load_and_answer(out, env.base)
    else:  # stage 2 under ZeRO-3: every weight, the late-built projector and refiner too, reaches the checkpoint
        run(env, out, launcher="deepspeed", deepspeed=ROOT / "scripts" / "zero3.json", data=env.good,
            pretrain_mm_mlp_adapter=stage1.out / "mm_projector.bin", learning_rate=2e-5, save_steps=1)
        load_and_answer(out)
        load_and_answer(out / "checkpoint-1")


# ---- the dataset, in process ------------------------------------------------------------------------------------
def make_dataset(env, tokenizer_dir, data, **args):
    from transformers import CLIPImageProcessor
    from llava import conversation as conversation_lib

    from rgpt_llava.tokenization import load_tokenizer
    from rgpt_llava.train.dataset import make_region_data_module

    conversation_lib.default_conversation = conversation_lib.conv_templates["vicuna_v1"]
    tok = load_tokenizer(tokenizer_dir, model_max_length=512, padding_side="right")
    tok.pad_token = tok.unk_token
    fields = dict(data_path=data, image_folder=env.images, image_aspect_ratio="pad", skipped_log=None,
                  image_processor=CLIPImageProcessor.from_pretrained(env.clip), is_multimodal=True,
                  mm_use_im_start_end=False)
    fields.update(args)
    data_args = SimpleNamespace(**fields)
    return tok, make_region_data_module(tok, data_args)


def test_dataset_masks_labels_and_collates(env, real_tokenizer_dir):
    tok, module = make_dataset(env, real_tokenizer_dir, env.good)
    ds = module["train_dataset"]
    item = ds[0]
    assert item["region_masks"].shape == (2, 56, 56) and item["image"].shape == (3, 56, 56)
    ids, labels = item["input_ids"], item["labels"]
    assert [int(REGION_TOKEN_INDEX - i) for i in ids if i <= REGION_TOKEN_INDEX] == [0, 1]
    # only the answers (and their </s>) are learned; with the real Vicuna tokenizer LLaVA's masking lines up
    kept = labels[labels != IGNORE_INDEX].tolist()
    assert tok.decode(kept) == "a red box</s> a blue square</s>"
    batch = module["data_collator"]([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 56, 56)
    assert batch["region_masks"][0].shape == (2, 56, 56) and batch["region_masks"][1] is None
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    # LLaVA's modality_lengths: negative for text-only samples
    _, full = make_dataset(env, real_tokenizer_dir, env.data)
    lengths = full["train_dataset"].modality_lengths
    assert lengths[0] > 0 and lengths[2] < 0


@torch.no_grad()
def test_training_entry_makes_masks_at_the_map_resolution(env, tiny_tokenizer_dir, rgpt_model):
    """The data module LLaVA's train() asks for makes masks at the model's refined map size in the dataset: nothing
    of the processed image's size (56x56 here, 336x336 for CLIP-L) is collated, and the loss is the one the
    full-resolution masks give."""
    from rgpt_llava.area import area_resize
    from rgpt_llava.train import train as entry

    tok, full = make_dataset(env, tiny_tokenizer_dir, env.good)
    module = entry.make_data_module(tok, SimpleNamespace(**vars(full["train_dataset"].data_args)), model=rgpt_model)
    assert rgpt_model.region_map_size() == (16, 16)
    assert tuple(rgpt_model.encode_feature_map(torch.zeros(1, 3, 56, 56)).shape[-2:]) == (16, 16)
    ds, ds_full = module["train_dataset"], full["train_dataset"]
    assert ds[0]["region_masks"].shape == (2, 16, 16)
    assert torch.allclose(ds[0]["region_masks"], area_resize(ds_full[0]["region_masks"], (16, 16)), atol=1e-6)
    batch = module["data_collator"]([ds[0], ds[1]])
    batch_full = full["data_collator"]([ds_full[0], ds_full[1]])
    assert [None if m is None else tuple(m.shape) for m in batch["region_masks"]] == [(2, 16, 16), None]
    assert torch.allclose(rgpt_model(**batch).loss, rgpt_model(**batch_full).loss, atol=1e-5)


def test_dataset_box_augmentation_and_skips(env, tiny_tokenizer_dir, tmp_path):
    from rgpt_llava.geometry import process_regions

    _, module = make_dataset(env, tiny_tokenizer_dir, env.good, region_box_prob=1.0)
    ds = module["train_dataset"]
    masks = ds[0]["region_masks"]
    # the second region had a mask and a box: with probability 1 it is given as its box
    proc = ds.data_args.image_processor
    expected = process_regions([{"bbox": [10, 20, 60, 40]}, {"bbox": [100, 30, 50, 50]}], (200, 120), proc, "pad")
    assert torch.equal(masks, expected)

    log = tmp_path / "skips.jsonl"
    _, module = make_dataset(env, tiny_tokenizer_dir, env.data, skipped_log=str(log))
    ds = module["train_dataset"]
    assert len(ds) == 6  # 'no-conversations' and 'region-missing' are caught when the file is read
    # a bad sample is replaced by the next usable one, and recorded
    missing = [i for i, s in enumerate(ds.list_data_dict) if s["id"] == "missing-image"][0]
    assert ds[missing]["input_ids"].shape[0] > 0
    reasons = [json.loads(line)["reason"] for line in open(log)]
    assert any("nope.png not found" in r for r in reasons)
    assert any("refers to region(s) [2] but 1 region(s)" in r for r in reasons)
    corrupt = [i for i, s in enumerate(ds.list_data_dict) if s["id"] == "corrupt-image"][0]
    ds[corrupt]
    outside = [i for i, s in enumerate(ds.list_data_dict) if s["id"] == "box-outside"][0]
    ds[outside]
    reasons = [json.loads(line)["reason"] for line in open(log)]
    assert any("unreadable" in r for r in reasons) and any("outside the 200x120 image" in r for r in reasons)


def test_box_draws_differ_between_dataloader_workers(env, tiny_tokenizer_dir, monkeypatch):
    """Each worker holds a copy of the dataset: without a generator of its own it would repeat the others' draws."""
    import random
    from types import SimpleNamespace as NS
    _, module = make_dataset(env, tiny_tokenizer_dir, env.good, region_box_prob=0.5)
    ds = module["train_dataset"]
    sample = {"regions": [{"bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5]]}]}

    def sequence(worker):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker)
        return ["segmentation" in ds.region_specs(sample)[0] for _ in range(64)]

    main = sequence(None)
    seed = ds.seed
    expected = random.Random(seed)   # the main process (0 workers) draws exactly as before
    assert main == [not expected.random() < 0.5 for _ in range(64)]
    w0, w1 = sequence(NS(id=0)), sequence(NS(id=1))
    assert w0 != w1 and w0 != main
    expected = random.Random(f"{seed}/worker/1")
    ds._rng_worker = None   # a fresh copy in worker 1
    assert sequence(NS(id=1)) == [not expected.random() < 0.5 for _ in range(64)]


def test_tokenization_mismatch_is_reported_not_trained(env, tiny_tokenizer_dir, monkeypatch):
    import llava.train.train as llava_train
    from rgpt_llava.train.dataset import SampleError

    _, module = make_dataset(env, tiny_tokenizer_dir, env.good)
    ds = module["train_dataset"]
    real = llava_train.preprocess

    def mismatching(sources, tokenizer, has_image=False):  # what LLaVA does on a mismatch: all labels ignored
        out = real(sources, tokenizer, has_image=has_image)
        out["labels"][:] = IGNORE_INDEX
        return out

    monkeypatch.setattr(llava_train, "preprocess", mismatching)
    with pytest.raises(SampleError, match="tokenization mismatch"):
        ds.build(0)


def test_bad_data_files(env, tiny_tokenizer_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        make_dataset(env, tiny_tokenizer_dir, str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        make_dataset(env, tiny_tokenizer_dir, str(tmp_path / "bad.json"))
    (tmp_path / "obj.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        make_dataset(env, tiny_tokenizer_dir, str(tmp_path / "obj.json"))
    (tmp_path / "allbad.json").write_text(json.dumps(BAD[-2:]))
    with pytest.raises(ValueError, match="no usable sample"):
        make_dataset(env, tiny_tokenizer_dir, str(tmp_path / "allbad.json"))


def test_saving_helpers_need_no_deepspeed(monkeypatch):
    from llava.train.train import maybe_zero_3 as llava_maybe_zero_3
    from rgpt_llava.train.trainer import maybe_zero_3, region_module_state

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as if DeepSpeed were not installed
    p = torch.nn.Parameter(torch.ones(2))
    assert torch.equal(maybe_zero_3(p), torch.ones(2))
    state = region_module_state([("model.mm_refiner.up1.weight", p), ("model.layers.0.w", p)])
    assert list(state) == ["model.mm_refiner.up1.weight"]
    import inspect
    source = inspect.getsource(llava_maybe_zero_3)
    if source.index("from deepspeed import zero") < source.index('hasattr(param, "ds_id")'):
        with pytest.raises(ImportError):  # unpatched LLaVA's own helper imports DeepSpeed unconditionally
            llava_maybe_zero_3(p)
    else:  # patches/0005 applied: LLaVA's helper needs no DeepSpeed either
        assert torch.equal(llava_maybe_zero_3(p), torch.ones(2))


def test_training_order_is_the_seed_and_epochs_alone(env, tiny_tokenizer_dir, rgpt_model, tmp_path):
    # torch's RandomSampler seeded itself from the global RNG (transformers 4.x) where accelerate 1.x seeds its own:
    # the same --seed gave another sample order per stack. RGPT's trainer draws it from (seed, epoch) only.
    from rgpt_llava.train.arguments import RGPTTrainingArguments
    from rgpt_llava.train.trainer import RGPTTrainer, SeededShuffle
    order = SeededShuffle(10, seed=3)
    first = list(order)
    torch.manual_seed(999)   # whatever the global state, the order stays
    assert list(order) == first == torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003)).tolist()
    order.set_epoch(1)
    second = list(order)
    assert sorted(second) == list(range(10)) and second != first
    _, module = make_dataset(env, tiny_tokenizer_dir, env.good)
    trainer = RGPTTrainer(model=rgpt_model, args=RGPTTrainingArguments(output_dir=str(tmp_path), seed=7,
                                                                        report_to="none", use_cpu=True), **module)
    sampler = trainer.get_train_dataloader().batch_sampler.sampler
    assert isinstance(sampler, SeededShuffle) and (sampler.seed, sampler.size) == (7, 2)


def test_mm_projector_lr_applies_to_the_refiner(tmp_path, tiny_tokenizer_dir, rgpt_model, env):
    from rgpt_llava.train.arguments import RGPTTrainingArguments
    from rgpt_llava.train.trainer import RGPTTrainer
    _, module = make_dataset(env, tiny_tokenizer_dir, env.good)
    args = RGPTTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, mm_projector_lr=1e-3,
                                 report_to="none", use_cpu=True)
    optimizer = RGPTTrainer(model=rgpt_model, args=args, **module).create_optimizer()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(rgpt_model.named_parameters())
    trained = {n for n, p in names.items() if p.requires_grad}
    assert {id(names[n]) for n in trained} == set(lr_of)   # every trained parameter once
    for n in trained:
        region = "mm_projector" in n or "mm_refiner" in n
        assert lr_of[id(names[n])] == (1e-3 if region else 1e-4), n
    assert any("mm_refiner" in n for n in trained) and any("layers" in n for n in trained)
