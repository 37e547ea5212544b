"""The RegionShapes benchmark driver: arguments, attribute scoring, results table (the end-to-end run that must
learn is tests/test_scripts.py::test_demo_learns_regionshapes)."""
import io
import json
import sys
from pathlib import Path

import pytest

from rgpt_llava.shapes import benchmark as SB


def test_presets_and_overrides():
    args = SB.parse_args(["--out", "x"])
    assert args.preset == "demo" and args.model_names == ["rgpt"]
    assert (args.n_train, args.stage2_steps) == (SB.PRESETS["demo"]["n_train"], SB.PRESETS["demo"]["stage2_steps"])
    args = SB.parse_args(["--out", "x", "--preset", "ci", "--stage2-steps", "7", "--models", "all"])
    assert args.stage2_steps == 7 and args.n_train == SB.PRESETS["ci"]["n_train"]
    assert args.model_names == ["rgpt", "rgpt-none", "llava-text"]
    assert (args.batch_size, args.stage1_lr, args.stage2_lr, args.merge_size, args.version) == (16, 1e-3, 1e-3, None,
                                                                                               "v1")


def test_the_smollm2_preset_and_its_llm():
    args = SB.parse_args(["--out", "x", "--preset", "smollm2"])
    assert (args.llm, args.llm_name, args.llm_layers, args.llm_hidden, args.version) == \
        ("smollm2", "smollm2_4layers", 4, 576, "smollm2")
    assert (args.batch_size, args.stage2_lr, args.stage2_projector_lr, args.merge_size, args.rec_turns) == \
        (8, 2e-4, 1e-3, [4, 4], 4)
    # flags beat the preset; all 30 blocks are the plain "smollm2"; the preset's depth is not another LLM's
    args = SB.parse_args(["--out", "x", "--preset", "smollm2", "--llm-layers", "30", "--batch-size", "4"])
    assert (args.llm_name, args.batch_size) == ("smollm2", 4)
    args = SB.parse_args(["--out", "x", "--preset", "smollm2", "--llm", "random"])
    assert (args.llm_layers, args.version, args.merge_size) == (SB.LLM["num_layers"], "v1", [4, 4])
    args = SB.parse_args(["--out", "x", "--llm", "smollm2"])  # another preset: SmolLM2 whole
    assert (args.llm_layers, args.preset, args.batch_size) == (30, "demo", 16)


@pytest.mark.parametrize("argv, message", [
    (["--models", "rgpt,gpt4"], "unknown model(s) ['gpt4']"),
    (["--models", ","], "unknown model(s) []"),
    (["--stage2-steps", "0"], "--stage2-steps must be at least 1"),
    (["--region-box-prob", "1.5"], "--region-box-prob must be in [0, 1]"),
    (["--merge-size", "0", "4"], "--merge-size must be positive"),
    (["--tower", "/nonexistent/tower"], "--tower /nonexistent/tower: not a CLIPVisionModel folder"),
    (["--tower-seconds", "-1"], "--tower-seconds must be >= 0"),
    (["--stage2-projector-lr", "0"], "--stage2-projector-lr must be positive, got 0.0"),
    (["--llm", "smollm2", "--llm-layers", "31"], "--llm-layers 31: SmolLM2-135M has 30 blocks"),
    (["--llm", "smollm2", "--llm-init-std", "0.02"], "--llm-init-std shapes a random LLM; --llm smollm2 starts"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        SB.parse_args(["--out", "x"] + argv)
    assert message in capsys.readouterr().err


def test_attribute_accuracy_by_hand(tmp_path):
    gt = {"categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue star"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rows = [{"question_id": 1, "text": "red circle", "category_id": 1},      # both right
            {"question_id": 2, "text": "Red star", "category_id": 1},        # colour right
            {"question_id": 3, "text": "red star", "category_id": 2},        # shape right
            {"question_id": 4, "text": "", "category_id": 2}]                # nothing
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = SB.attribute_accuracy(tmp_path / "gt.json", tmp_path / "a.jsonl")
    assert res == {"colour_accuracy": 50.0, "shape_accuracy": 50.0}


def test_results_table():
    table = SB.results_table({"rgpt": {"cls_accuracy": 91.25, "cls_mAP": None, "rec_accuracy": 85.0}})
    lines = table.splitlines()
    assert lines[0].startswith("| model | cls acc % | cls mAP |")
    assert lines[2].startswith("| rgpt | 91.2 | n/a |")
    assert len(lines[2].split("|")) == len(lines[0].split("|"))


def test_merge_size_applies_to_region_models_only():
    args = SB.parse_args(["--out", "x", "--merge-size", "4", "4"])
    assert SB.merge_flags(SB.MODELS["rgpt"], args) == ["--mm_merge_size", "4", "4"]
    assert SB.merge_flags(SB.MODELS["rgpt-none"], args) == ["--mm_merge_size", "4", "4"]
    assert SB.merge_flags(SB.MODELS["llava-text"], args) == []     # plain LLaVA keeps the tower's grid
    assert SB.merge_flags(SB.MODELS["rgpt"], SB.parse_args(["--out", "x"])) == []


def fake_data(out):
    """A data folder that prepare() takes as made with --n-train 10 --n-val 2 (nothing else is read)."""
    (out / "data").mkdir(parents=True)
    (out / "data" / "meta.json").write_text(json.dumps({"args": {"n_train": 10, "n_val": 2, "seed": 0, "max_rec": 2}}))
    (out / "data" / "train_text.json").write_text("[]")


def fake_trained_model(out, settings, name="rgpt"):
    """A finished model folder as train_model leaves it, trained with ``settings``."""
    (out / name / "stage2").mkdir(parents=True, exist_ok=True)
    (out / name / "stage2" / "config.json").write_text("{}")
    (out / name / "timing.json").write_text(json.dumps({"stage1_s": 1.0, "stage2_s": 2.0}))
    (out / name / "settings.json").write_text(json.dumps(settings))


def test_a_model_trained_with_other_settings_is_not_reused(tmp_path):
    args = SB.parse_args(["--out", str(tmp_path), "--stage2-steps", "5"])
    fake_trained_model(tmp_path, {"stage2_steps": 999})
    with pytest.raises(SB.BenchmarkError, match="trained with other settings"):
        SB.train_model("rgpt", args, tmp_path, {"tower": tmp_path})


def test_tower_choice_and_identity(tmp_path):
    assert SB.parse_args(["--out", "x"]).tower_name == "pretrained"
    assert SB.parse_args(["--out", "x", "--tower", "random"]).tower_name == "random"
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights A")
    custom = SB.parse_args(["--out", "x", "--tower", str(tmp_path)])
    assert custom.tower_name == "custom_" + SB.weights_id(tmp_path)
    before = SB.weights_id(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights B")
    assert SB.weights_id(tmp_path) != before    # other weights: a trained model is not reused with them


def test_shipped_tower_is_the_benchmark_architecture():
    from transformers import CLIPVisionModel
    tower = CLIPVisionModel.from_pretrained(SB.PRETRAINED_TOWER)
    cfg = tower.config
    assert (cfg.image_size, cfg.patch_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        SB.TOWER["image_size"], SB.TOWER["patch_size"], SB.TOWER["hidden_size"], SB.TOWER["num_layers"],
        SB.TOWER["num_heads"])
    made = json.loads((SB.PRETRAINED_TOWER / "tower_pretraining.json").read_text())
    assert made["select_layer"] == -2 and "--shapes" in made["command"]
    assert made["history"][-1]["region_probe"]["mask_category_acc"] > 90


def test_data_made_with_other_settings_is_not_reused(tmp_path):
    args = SB.parse_args(["--out", str(tmp_path), "--n-train", "10", "--n-val", "2"])
    (tmp_path / "data").mkdir()
    made = {"n_train": 10, "n_val": 2, "seed": 0, "max_rec": 4}
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"args": made}))
    with pytest.raises(SB.BenchmarkError, match="holds RegionShapes made with .*'max_rec': 4.*use another --out"):
        SB.prepare(args, tmp_path)


def fake_llm(folder, layers=3, model_type="llama", weights=b"llm weights A"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": layers,
                                                    "hidden_size": 64}))
    (folder / "tokenizer.model").write_bytes(b"sp")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_llm_choice_is_named_and_checked(tmp_path, capsys):
    args = SB.parse_args(["--out", "x"])
    assert (args.llm_name, args.llm_layers, args.llm_hidden) == ("random", SB.LLM["num_layers"], SB.LLM["hidden_size"])
    assert SB.parse_args(["--out", "x", "--llm-layers", "4"]).llm_layers == 4
    assert args.llm_init_std == SB.LLM["init_std"] == 0.088      # 1/sqrt(128), the fan-in scale
    assert SB.parse_args(["--out", "x", "--llm-init-std", "0.02"]).llm_init_std == 0.02
    llm = fake_llm(tmp_path / "llm")
    args = SB.parse_args(["--out", "x", "--llm", str(llm)])
    assert (args.llm_layers, args.llm_hidden) == (3, 64) and args.llm_name == "custom_" + SB.weights_id(llm)
    for argv, message in [
        (["--llm", str(tmp_path / "nowhere")], "not a Llama folder with its tokenizer (config.json, tokenizer.model or"),
        (["--llm", str(fake_llm(tmp_path / "clip", model_type="clip_vision_model"))], "model_type is 'clip_vision_model'"),
        (["--llm", str(llm), "--llm-layers", "4"], "--llm-layers shapes a random LLM; with --llm DIR the folder's"),
        (["--llm", str(llm), "--llm-init-std", "0.05"], "--llm-init-std shapes a random LLM; with --llm DIR"),
        (["--llm-layers", "0"], "--llm-layers must be at least 1"),
        (["--llm-init-std", "0"], "--llm-init-std must be positive, got 0.0"),
    ]:
        with pytest.raises(SystemExit):
            SB.parse_args(["--out", "x"] + argv)
        assert message in capsys.readouterr().err


def test_a_custom_llm_is_the_base_and_part_of_the_reuse_key(tmp_path):
    llm = fake_llm(tmp_path / "llm")
    out = tmp_path / "out"
    args = SB.parse_args(["--out", str(out), "--n-train", "10", "--n-val", "2", "--llm", str(llm)])
    fake_data(out)
    paths = SB.prepare(args, out)
    assert paths["base"] == out / "base" / f"llm_{args.llm_name}"
    assert (paths["base"] / "model.safetensors").read_bytes() == b"llm weights A"
    # a model trained from the random LLM is not reused with this one
    random_args = SB.parse_args(["--out", str(out), "--n-train", "10", "--n-val", "2"])
    settings = SB.model_settings("rgpt", random_args, paths["tower"])
    assert settings["llm"] == "random" != SB.model_settings("rgpt", args, paths["tower"])["llm"]
    fake_trained_model(out, settings)
    assert SB.train_model("rgpt", random_args, out, paths) == {"stage1_s": 1.0, "stage2_s": 2.0}   # same: reused
    with pytest.raises(SB.BenchmarkError, match="trained with other settings"):
        SB.train_model("rgpt", args, out, paths)


def test_device_and_workers_reach_the_training_runs(monkeypatch, capsys):
    args = SB.parse_args(["--out", "x", "--workers", "6"])
    flags = SB.train_flags(SB.MODELS["rgpt"], args, Path("o"), Path("b"), Path("t"), Path("d.json"), Path("d"), 5, 1e-3)
    assert flags[flags.index("--dataloader_num_workers") + 1] == "6"
    assert flags[flags.index("--use_cpu") + 1] == "True"          # the default: CPU, as the presets are measured
    args.device = "cuda"
    flags = SB.train_flags(SB.MODELS["rgpt"], args, Path("o"), Path("b"), Path("t"), Path("d.json"), Path("d"), 5, 1e-3)
    assert "--use_cpu" not in flags                                # the HF Trainer then takes the GPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for argv, message in [(["--device", "cuda"], "--device cuda: torch sees no CUDA device here"),
                          (["--workers", "-1"], "--workers must be >= 0, got -1")]:
        with pytest.raises(SystemExit):
            SB.parse_args(["--out", "x"] + argv)
        assert message in capsys.readouterr().err


def test_llm_init_std_makes_its_own_base_and_reuse_key(tmp_path):
    out = tmp_path / "out"
    fake_data(out)
    # a base LLM left by a run from before the default changed (built at 0.02, folder "llm") is not picked up
    (out / "base" / "llm").mkdir(parents=True)
    (out / "base" / "llm" / "config.json").write_text(json.dumps({"initializer_range": 0.02}))
    common = ["--out", str(out), "--n-train", "10", "--n-val", "2", "--tower", "random"]
    default, transformers_scale = SB.parse_args(common), SB.parse_args(common + ["--llm-init-std", "0.02"])
    paths = SB.prepare(default, out)
    assert paths["base"] == out / "base" / "llm_std0.088"
    assert json.loads((paths["base"] / "config.json").read_text())["initializer_range"] == 0.088
    other = SB.prepare(transformers_scale, out)["base"]
    assert other == out / "base" / "llm_std0.02"
    assert json.loads((other / "config.json").read_text())["initializer_range"] == 0.02
    # a model trained with another scale, or before the scale was part of the settings, is not reused
    settings = SB.model_settings("rgpt", default, paths["tower"])
    assert settings["llm_init_std"] == 0.088
    fake_trained_model(out, settings)
    assert SB.train_model("rgpt", default, out, paths) == {"stage1_s": 1.0, "stage2_s": 2.0}
    with pytest.raises(SB.BenchmarkError, match="trained with other settings"):
        SB.train_model("rgpt", transformers_scale, out, paths)
    del settings["llm_init_std"]
    fake_trained_model(out, settings)
    with pytest.raises(SB.BenchmarkError, match="trained with other settings"):
        SB.train_model("rgpt", default, out, paths)


def test_stage_progress_shows_steps_eta_and_loss_at_each_tenth():
    out = io.StringIO()
    progress = SB.StageProgress("rgpt, stage 2", stream=out)
    # what the HF Trainer prints: tqdm redraws (\r) and logged dicts, here cut in the middle of a redraw
    text = "".join(f"\r {n * 5}%|#| {n}/20 [00:{n:02d}<00:{20 - n:02d},  1.00s/it]" for n in range(0, 21))
    text = text.replace("\r 50%", "{'loss': 2.5, 'learning_rate': 0.001}\n\r 50%")
    for i in range(0, len(text), 37):
        progress.feed(text[i:i + 37])
    progress.close()
    lines = out.getvalue().splitlines()
    steps = [int(line.split("step ")[1].split("/")[0]) for line in lines]
    assert steps == sorted(set(steps)) and steps[0] <= 2 and steps[-1] == 20 and len(steps) <= 11
    assert lines[-1] == "[shapes] rgpt, stage 2: step 20/20, 00:20 elapsed, ETA 00:00, loss 2.500"
    assert "loss" not in lines[0]


def test_run_logs_everything_and_names_a_failure(tmp_path):
    code = "import sys; print('noise'); sys.stderr.write('\\r 1/2 [00:01<00:01]\\r 2/2 [00:02<00:00]'); sys.exit(3)"
    with pytest.raises(SB.BenchmarkError, match=r"demo step failed \(exit 3\); see .*run.log"):
        SB.run([sys.executable, "-c", code], tmp_path / "run.log", "demo step")
    logged = (tmp_path / "run.log").read_text()
    assert "noise" in logged and "2/2 [00:02<00:00]" in logged


def test_stage_progress_redraws_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out = Terminal()
    progress = SB.StageProgress("rgpt, stage 1", stream=out)
    for n in range(4):
        progress.feed(f"\r{n}/3 [00:0{n}<00:0{3 - n}]")
    progress.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert text.rstrip().endswith("[shapes] rgpt, stage 1: step 3/3, 00:03 elapsed, ETA 00:00")
