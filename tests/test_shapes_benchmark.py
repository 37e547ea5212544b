"""The RegionShapes benchmark driver: arguments, attribute scoring, results table (the end-to-end run that must
learn is tests/test_scripts.py::test_demo_learns_regionshapes)."""
import json

import pytest

from rgpt_llava import shapes_benchmark as SB


def test_presets_and_overrides():
    args = SB.parse_args(["--out", "x"])
    assert args.preset == "demo" and args.model_names == ["rgpt"]
    assert (args.n_train, args.stage2_steps) == (SB.PRESETS["demo"]["n_train"], SB.PRESETS["demo"]["stage2_steps"])
    args = SB.parse_args(["--out", "x", "--preset", "ci", "--stage2-steps", "7", "--models", "all"])
    assert args.stage2_steps == 7 and args.n_train == SB.PRESETS["ci"]["n_train"]
    assert args.model_names == ["rgpt", "rgpt-none", "llava-text"]


@pytest.mark.parametrize("argv, message", [
    (["--models", "rgpt,gpt4"], "unknown model(s) ['gpt4']"),
    (["--models", ","], "unknown model(s) []"),
    (["--stage2-steps", "0"], "--stage2-steps must be at least 1"),
    (["--region-box-prob", "1.5"], "--region-box-prob must be in [0, 1]"),
    (["--merge-size", "0", "4"], "--merge-size must be positive"),
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


def test_a_model_trained_with_other_settings_is_not_reused(tmp_path):
    args = SB.parse_args(["--out", str(tmp_path), "--stage2-steps", "5"])
    final = tmp_path / "rgpt" / "stage2"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (tmp_path / "rgpt" / "timing.json").write_text(json.dumps({"stage1_s": 1.0, "stage2_s": 2.0}))
    (tmp_path / "rgpt" / "settings.json").write_text(json.dumps({"stage2_steps": 999}))
    with pytest.raises(SB.BenchmarkError, match="trained with other settings"):
        SB.train_model("rgpt", args, tmp_path, {})
