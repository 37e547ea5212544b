"""DLC-Bench: the judge's option matching, the scores by hand, the judge endpoint (cache, failures), the generation
step, and scripts/eval/dlc_bench.sh end to end with this project's own API on the tiny checkpoint as the judge."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rgpt_llava.eval import dlc_bench as D
from rgpt_llava.eval.common import EvalInputError
from rgpt_llava.eval.generate_common import run_main
from servers import Servers, free_port

ROOT = Path(__file__).resolve().parents[1]
POS = [["The wing or the bird is not mentioned.", 0],
       ["The color of the wing is not mentioned, but the wing of the bird is mentioned.", 0.5],
       ["The color of the wing is mentioned in the description but is not grey.", -1],
       ["The color of the wing is mentioned in the description and is grey.", 1]]
NEG3 = [["The claws of the bird are not mentioned in the description.", 1],
        ["The claws of the bird are mentioned in the description.", -1],
        ["The bird is not mentioned in the description.", 0]]
NEG2 = [["The boats are mentioned in the description.", -1], ["The boats are not mentioned in the description.", 1]]


def q(text, choices, kind):
    return {"question": text, "choices": choices, "type": kind}


# Three positives and two negatives (A), two and two (B), two and none (C), one and none (D).
QA = {"11": [q("P1 Which applies?", POS, "positive"), q("P2 Which applies?", POS, "positive"),
             q("P3 Which applies?", POS, "positive"), q("N1 Which applies?", NEG3, "negative"),
             q("N2 Which applies?", NEG2, "negative")],
      "12": [q("P1 Which applies?", POS, "positive"), q("P2 Which applies?", POS, "positive"),
             q("N1 Which applies?", NEG3, "negative"), q("N2 Which applies?", NEG2, "negative")],
      "13": [q("P1 Which applies?", POS, "positive"), q("P2 Which applies?", POS, "positive")],
      "14": [q("P1 Which applies?", POS, "positive")]}
NAMES = {"11": "wild bird", "12": "sneakers", "13": "ice cream", "14": "bus"}
# the judge's answers, recognition first, and what each scores (by hand, from the options above)
VERDICTS = {
    "11": ["A. Yes", "D. The color of the wing is mentioned in the description and is grey.", "B", "C.",
           "A.", "a"],                              # positives 1, 0.5, -1 -> 1/6; negatives 1, -1 -> 0
    "12": ["No", "D", "C", "A", "A"],               # not recognised: positives min(0, 1), -1 -> -1/2;
                                                    # negatives min(0, 1), -1 -> -1/2
    "13": ["yes", "I cannot tell from this", "B. The color of the wing is not mentioned, but the wing of the bird "
           "is mentioned."],                        # positives 0 (out of format), 0.5 -> 1/4; no negatives
    "14": ["maybe", "D"],                           # recognition out of format = not recognised: min(0, 1) -> 0
}
# pos = (1/6 - 1/2 + 1/4 + 0) / 4 = -1/48; neg = (0 - 1/2) / 2 = -1/4 (13, 14 have none); avg = -13/96
HAND = {"pos": -100 / 48, "neg": -25.0, "avg": -1300 / 96}


@pytest.fixture()
def bench_files(tmp_path):
    (tmp_path / "qa.json").write_text(json.dumps(QA))
    (tmp_path / "class_names.json").write_text(json.dumps(NAMES))
    return tmp_path / "qa.json", tmp_path / "class_names.json"


# ---------------------------------------------------------------------------------------------------------------------
def test_option_matching_follows_the_benchmark_rules():
    opts = [c for c, _ in POS]
    assert D.parse_choice("The wing or the bird is not mentioned.", opts) == (0, "exact")
    assert D.parse_choice("  d. the color of the wing is mentioned in the description and is grey.", opts) == \
        (3, "exact")
    assert D.parse_choice("B", opts) == (1, "exact")
    assert D.parse_choice("I pick: the wing or the bird is not mentioned. Sure.", opts) == (0, "contains")
    assert D.parse_choice("C. something else entirely", opts) == (2, "letter")
    assert D.parse_choice("E. beyond the options", opts) == (None, "out-of-format")
    two = ["Yes", "No"]
    assert D.parse_choice("No, yes", two) == (0, "contains-last")          # both occur: the later one
    assert D.parse_choice("mentioned in the description and", opts) == (3, "part-of")    # the longest holding it
    assert D.parse_choice("b\nbecause", ["Red", "Green"]) == (1, "letter-line")
    assert D.parse_choice("c\n", two) == (None, "out-of-format")
    assert D.parse_choice("", two) == (None, "out-of-format")
    assert D.parse_choice("zzz", two) == (None, "out-of-format")


# The 100 class names of DLC-Bench (from the recognition questions in DAM's published evaluation file,
# evaluation/model_outputs_cache/dam_3b_v1_eval.json) and how the benchmark phrased each (inflect).
BENCH_NAMES = (
    "air conditioner|antelope|apple|avocado|barrel/bucket|basket|belt|bench|boat|bottle|bow tie|bowl|can/container|"
    "car|carpet|cart/trolley|cat|chopsticks|clock|computer box|crane|cutting/chopping board|dog|drum|duck/goose|"
    "earphone|eraser|faucet|fork|garlic|gavel/mallet|glasses|globe|green bean|guitar|handbag|headphone|herb|"
    "hot air balloon|ice cream|key|lettuce|marker|megaphone/speaker|microwave|monitor/tv|motorcycle|mouse|notebook|"
    "orange/tangerine|pear|person|picture/frame|pot|potato|rabbit|rice cooker|rickshaw|sandals|scale|scissors|"
    "screwdriver|seal|showerhead|sign/banner|ski|slippers|sneakers|soap|spoon|stapler|stool|storage box|stove|"
    "street lights|stuffed toy|sushi|suv|table tennis paddle|taco|tape|tape measure/ruler|tent|toaster|toilet|tong|"
    "towel|traffic light|tripod|truck|van|watch|wild bird|wine glass|wood block").split("|")
BENCH_PLURAL = {"chopsticks", "glasses", "sandals", "scissors", "slippers", "sneakers", "street lights", "wine glass"}
BENCH_AN = {"air conditioner", "antelope", "apple", "avocado", "earphone", "eraser", "ice cream", "orange/tangerine"}


def test_recognition_questions_as_the_benchmark_asked_them():
    for name in BENCH_NAMES:
        text = D.recognition_question(name)["question"]
        if name in BENCH_PLURAL:
            assert text.startswith(f"Is it likely that the objects in the description are {name} or objects of a "
                                   f"similar type?"), text
        else:
            art = "an" if name in BENCH_AN else "a"
            assert text.startswith(f"Is it likely that the object in the description is {art} {name} or an object "
                                   f"of a similar type?"), text
        assert text.endswith("? Again, It does not have to be an exact match.")
    assert D.recognition_question("bus")["question"].startswith("Is it likely that the object in the description is "
                                                                "a bus ")


def test_judge_prompt_is_the_benchmarks():
    p = D.judge_prompt("A grey bird.", q("Which applies?", NEG2, "negative"))
    assert p.startswith("Answer the multiple-choice question based on the text description of an object in an "
                        "image. You need to follow these rules:\n1. Do not output any reasoning.")
    assert p.endswith("The description is:\nA grey bird.\n\nFrom the description above, please answer the following "
                      "question with one of the choices:\nWhich applies?\nA. The boats are mentioned in the "
                      "description.\nB. The boats are not mentioned in the description.\n")


def test_scores_by_hand_with_written_verdicts(bench_files):
    bench = D.load_benchmark(*map(str, bench_files))
    preds = {k: f"description {k}" for k in QA}
    res = D.score(bench, preds, VERDICTS, per_item=True)
    for k, v in HAND.items():
        assert res[k] == pytest.approx(v), k
    per = {p["question_id"]: p for p in res["per_item"]}
    assert per["11"]["score_pos"] == pytest.approx(1 / 6) and per["11"]["score_neg"] == 0
    assert per["12"]["score_pos"] == -0.5 and per["12"]["score_neg"] == -0.5 and not per["12"]["recognised"]
    assert per["13"]["score_neg"] is None and per["14"]["recognised"] is False
    assert res["num_items_with_negatives"] == 2 and res["num_not_recognised"] == 2
    # out-of-format answers are counted and listed, never matched to an option
    assert res["num_judge_out_of_format"] == 2
    assert res["judge_out_of_format"] == [
        {"question_id": "13", "question_index": 1, "type": "positive", "response": "I cannot tell from this"},
        {"question_id": "14", "question_index": 0, "type": "recognition", "response": "maybe"}]
    assert res["num_judge_answers"] == sum(len(v) for v in VERDICTS.values())
    assert res["judge_match_rules"]["out-of-format"] == 2
    with pytest.raises(EvalInputError, match="judge answers for id '11': expected one per question of the qa file"):
        D.score(bench, preds, {"11": VERDICTS["11"][:-1]})


def test_bad_benchmark_files_name_the_item(tmp_path):
    qa = tmp_path / "qa.json"
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"7": "cat"}))
    for bad, message in [({"7": [q("Which?", [["only one", 1]], "positive")]}, "key '7', question 0: 1 choices"),
                         ({"7": [q("Which?", [["a", 1], ["b", "x"]], "positive")]}, "choice 1: expected [text, score]"),
                         ({"7": [q("Which?", NEG2, "other")]}, "key '7', question 0: type must be one of"),
                         ({"7": [q("Which?", NEG2, "negative")]}, "key '7': no positive question"),
                         ({"8": [q("Which?", POS, "positive")]}, "no class name for key '8'")]:
        qa.write_text(json.dumps(bad))
        with pytest.raises(EvalInputError, match=message.replace("[", r"\[").replace("(", r"\(")):
            D.load_benchmark(str(qa), str(names))


# ---------------------------------------------------------------------------------------------------------------------
# A STUB judge (not a model): answers each question from a table carried in the description, so that the scoring
# path through the real OpenAI client, the cache and the CLI can be checked against hand-computed scores. The real
# judge test is test_script_end_to_end_with_the_projects_api_as_judge below.
STUB = '''
import json, sys
import uvicorn
from fastapi import FastAPI, Request
app, asked = FastAPI(), []

@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    prompt = body["messages"][0]["content"]
    table = json.loads(prompt.split("The description is:\\n")[1].split("\\n\\nFrom the description")[0])
    question = prompt.split("one of the choices:\\n")[1].split("\\n")[0]
    asked.append(question)
    answer = table.get(question[:2], "maybe") if body["max_tokens"] > 1 else "ok"
    return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}]}

@app.get("/asked")
async def count():
    return {"asked": len(asked)}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''


def stub_descriptions(verdicts):
    """Descriptions that make the stub give ``verdicts`` (by question prefix: "Is" recognition, "P1", "N2", ...)."""
    out = {}
    for k, answers in verdicts.items():
        heads = ["Is"] + [x["question"][:2] for x in QA[k]]
        out[k] = json.dumps(dict(zip(heads, answers)))
    return out


@pytest.fixture()
def servers(tmp_path):
    s = Servers(tmp_path)
    yield s
    s.close()


def test_cli_through_a_stub_judge_with_cache(servers, bench_files, tmp_path, capsys):
    import requests
    (tmp_path / "stub.py").write_text(STUB)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    servers.start(str(tmp_path / "stub.py"), str(port), ready_url=url + "/asked")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": int(k), "text": t}) + "\n"
                               for k, t in stub_descriptions(VERDICTS).items()))
    qa, names = bench_files
    cache, out = tmp_path / "judgments.jsonl", tmp_path / "metrics.json"
    argv = ["--qa-file", str(qa), "--class-names", str(names), "--result-file", str(answers), "--judge-url",
            url + "/v1", "--judge-model", "stub", "--judgments-file", str(cache), "--out", str(out)]
    assert D.main(argv) == 0
    res = json.loads(out.read_text())
    for k, v in HAND.items():
        assert res[k] == pytest.approx(v), k
    total = sum(len(v) for v in VERDICTS.values())
    assert res["num_judge_requests"] == total == len(cache.read_text().splitlines())
    assert res["num_judge_out_of_format"] == 2 and "out of format: id 13, question 1" in capsys.readouterr().out
    # a rerun asks nothing; a changed description is asked anew (its region's questions only)
    assert D.main(argv) == 0 and json.loads(out.read_text())["num_judge_requests"] == 0
    changed = dict(VERDICTS, **{"14": ["Yes", "D"]})
    answers.write_text("".join(json.dumps({"question_id": k, "text": t}) + "\n"
                               for k, t in stub_descriptions(changed).items()))
    assert D.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["num_judge_requests"] == 2 and res["pos"] == pytest.approx(100 * (1 / 6 - 1 / 2 + 1 / 4 + 1) / 4)
    assert requests.get(url + "/asked").json()["asked"] == total + 2
    # DAM's own prediction format is read too
    dam = tmp_path / "dam.json"
    dam.write_text(json.dumps({**stub_descriptions(VERDICTS), "query": "<image>\nDescribe the masked region."}))
    assert D.main(argv[:5] + [str(dam)] + argv[6:]) == 0
    assert json.loads(out.read_text())["avg"] == pytest.approx(HAND["avg"])
    # missing descriptions are named; --allow-missing scores the rest
    answers.write_text(json.dumps({"question_id": 11, "text": "x"}) + "\n")
    assert D.run_cli(D.main, argv) == 2
    assert "3 ids of the qa file have no answer: '12', '13', '14'" in capsys.readouterr().err
    # a broken cache line is named
    cache.write_text('{"key": 1}\n{"key": "a", "response": "b"}\n')
    assert D.run_cli(D.main, argv) == 2
    assert f"judgments file {cache}, line 1" in capsys.readouterr().err


def test_an_unreachable_judge_fails_before_generation(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    proc = subprocess.run([sys.executable, "-m", "rgpt_llava.eval.dlc_bench", "check-judge", "--judge-url", closed,
                           "--judge-model", "m", "--judge-timeout", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"error: cannot reach the judge at {closed}" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the script checks the judge before it loads a model: nothing is generated, the (missing) model is never read
    env = dict(os.environ, MODEL_PATH=str(tmp_path / "never-loaded"), CKPT="t", GPUS="1", DEVICE="cpu",
               EVAL_ROOT=str(tmp_path / "eval"), PYTHON=sys.executable, JUDGE_URL=closed, JUDGE_MODEL="m")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "eval" / "dlc_bench.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and f"cannot reach the judge at {closed}" in proc.stderr
    assert "checkpoint" not in proc.stderr and not (tmp_path / "eval" / "dlc_bench" / "answers").exists()


# ---------------------------------------------------------------------------------------------------------------------
# the benchmark's files, small: a COCO-style annotations.json (polygon and RLE masks) over real photos
@pytest.fixture(scope="module")
def dlc_data(tmp_path_factory, images_dir):
    from PIL import Image
    from pycocotools import mask as mask_utils
    d = tmp_path_factory.mktemp("dlc") / "DLC-bench"
    (d / "images").mkdir(parents=True)
    images, anns = [], []
    for i, name in enumerate(["chelsea.jpg", "coffee.jpg"]):
        (d / "images" / name).symlink_to(Path(images_dir) / name)
        w, h = Image.open(d / "images" / name).size
        images.append({"id": 10 + i, "file_name": name, "width": w, "height": h})
        poly = [w * 0.2, h * 0.2, w * 0.6, h * 0.25, w * 0.5, h * 0.7, w * 0.25, h * 0.6]
        anns.append({"id": 100 + 2 * i, "image_id": 10 + i, "category_id": 1, "segmentation": [poly],
                     "area": 1.0, "bbox": [w * 0.2, h * 0.2, w * 0.4, h * 0.5], "iscrowd": 0})
        m = np.zeros((h, w), np.uint8)
        m[h // 3: h // 2, w // 2: w - 5] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": 101 + 2 * i, "image_id": 10 + i, "category_id": 1, "segmentation": rle, "area": 1.0,
                     "bbox": list(map(float, mask_utils.toBbox(rle))), "iscrowd": 0})
    (d / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                    "categories": [{"id": 1, "name": "object"}]}))
    qa = {str(a["id"]): [q("P1 Which applies?", POS, "positive"), q("N1 Which applies?", NEG2, "negative")]
          for a in anns}
    (d / "qa.json").write_text(json.dumps(qa))
    (d / "class_names.json").write_text(json.dumps({k: "cat" for k in qa}))
    return d


def gen_args(ckpt, d, out, *extra):
    return ["--model-path", ckpt, "--annotation-file", str(d / "annotations.json"), "--image-folder",
            str(d / "images"), "--answers-file", str(out), "--device", "cpu", "--max-new-tokens", "5", *extra]


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_generation_greedy_sampled_and_bad_annotations(tiny_rgpt_dir, dlc_data, tmp_path, capsys):
    from rgpt_llava.eval import model_dlc_bench as M
    assert "<region1>" in M.DEFAULT_PROMPT and M.DEFAULT_PROMPT.startswith("Describe in detail the object")
    out = tmp_path / "greedy.jsonl"
    assert run_main(M.main, gen_args(tiny_rgpt_dir, dlc_data, out)) == 0
    got = rows(out)
    assert [r["question_id"] for r in got] == [100, 101, 102, 103]   # images in order, their annotations in order
    assert [r["image"] for r in got] == ["chelsea.jpg"] * 2 + ["coffee.jpg"] * 2
    naive = tmp_path / "naive.jsonl"
    assert run_main(M.main, gen_args(tiny_rgpt_dir, dlc_data, naive, "--naive")) == 0
    assert [r["text"] for r in rows(naive)] == [r["text"] for r in got]
    # sampling: one seed, one answer per question, whatever the chunking
    s1, s2 = tmp_path / "s1.jsonl", tmp_path / "s2_0.jsonl"
    assert run_main(M.main, gen_args(tiny_rgpt_dir, dlc_data, s1, "--temperature", "1.5", "--seed", "7")) == 0
    assert run_main(M.main, gen_args(tiny_rgpt_dir, dlc_data, s2, "--temperature", "1.5", "--seed", "7",
                                     "--num-chunks", "2", "--chunk-idx", "1")) == 0
    assert rows(s2) == rows(s1)[2:]
    # a malformed annotation names itself and its image
    bad = json.loads((dlc_data / "annotations.json").read_text())
    del bad["annotations"][1]["segmentation"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    args = gen_args(tiny_rgpt_dir, dlc_data, tmp_path / "x.jsonl")
    args[args.index("--annotation-file") + 1] = str(tmp_path / "bad.json")
    assert run_main(M.main, args) == 2
    assert "annotations[1] (annotation id 101): no 'segmentation'" in capsys.readouterr().err
    bad["annotations"][1]["segmentation"] = [[1, 2, 3]]      # a polygon of one and a half points
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert run_main(M.main, args) == 2
    err = capsys.readouterr().err
    assert "annotation id 101" in err and "image 'chelsea.jpg'" in err


# ---------------------------------------------------------------------------------------------------------------------
def test_script_end_to_end_with_the_projects_api_as_judge(servers, tiny_rgpt_dir, dlc_data, tmp_path):
    """The judge is a REAL server: this project's OpenAI-compatible API on the tiny random checkpoint. Its answers
    are arbitrary text, so most match no option: they must be counted and listed, and the run must finish."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    servers.start("-m", "rgpt_llava.serve.openai_api", "--model-path", tiny_rgpt_dir, "--model-name", "tiny-judge",
                  "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), ready_url=api + "/v1/models")
    # a model the server does not serve is named with the URL, before anything else
    proc = subprocess.run([sys.executable, "-m", "rgpt_llava.eval.dlc_bench", "check-judge", "--judge-url",
                           api + "/v1", "--judge-model", "no-such-model"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"error: the judge at {api}/v1" in proc.stderr and "no-such-model" in proc.stderr
    e = tmp_path / "eval"
    (e / "dlc_bench").mkdir(parents=True)
    (e / "dlc_bench" / "DLC-bench").symlink_to(dlc_data)
    env = dict(os.environ, MODEL_PATH=tiny_rgpt_dir, CKPT="tiny", GPUS="2", DEVICE="cpu", EVAL_ROOT=str(e),
               PYTHON=sys.executable, GEN_ARGS="--max-new-tokens 6", JUDGE_URL=api + "/v1",
               JUDGE_MODEL="tiny-judge", JUDGE_ARGS="--judge-max-tokens 5 --judge-workers 2")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    script = ["bash", str(ROOT / "scripts" / "eval" / "dlc_bench.sh")]
    r = subprocess.run(script, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = e / "dlc_bench" / "answers" / "tiny"
    assert sorted(x["question_id"] for x in rows(out / "merge.jsonl")) == [100, 101, 102, 103]
    res = json.loads((out / "metrics.json").read_text())
    judged = rows(out / "judgments.jsonl")
    # one request per distinct prompt (two regions with the same description share their answers)
    assert res["num_items"] == 4 and res["num_judge_answers"] == 4 * 3
    assert res["judge_model"] == "tiny-judge" and res["num_judge_requests"] == len(judged) <= 12
    # every answer is accounted for: the out-of-format ones are exactly those that match no option
    bench = D.load_benchmark(str(dlc_data / "qa.json"), str(dlc_data / "class_names.json"))
    cache = D.Judge(api + "/v1", "tiny-judge", cache=str(out / "judgments.jsonl"))
    unmatched = []
    for a in rows(out / "merge.jsonl"):
        for i, question in enumerate(bench[str(a["question_id"])]["questions"]):
            response = cache.cached[cache.key(D.judge_prompt(a["text"], question))]
            if D.parse_choice(response, [c for c, _ in question["choices"]])[0] is None:
                unmatched.append((str(a["question_id"]), i))
    assert res["num_judge_out_of_format"] == len(unmatched) > 0      # a random model's bytes are no option
    assert sorted((o["question_id"], o["question_index"]) for o in res["judge_out_of_format"]) == sorted(unmatched)
    assert sum(res["judge_match_rules"].values()) == 12
    # the rerun resumes: nothing generated again, nothing asked again
    r = subprocess.run(script, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["num_judge_requests"] == 0
    assert "0 answers written" in r.stderr
