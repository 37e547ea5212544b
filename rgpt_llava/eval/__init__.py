"""Scorers of RegionGPT's region benchmarks (paper Sec. 4): ``coco_cls`` (region classification: accuracy,
synonym-aware accuracy, COCOeval mAP), ``caption`` (BLEU / METEOR / ROUGE-L / CIDEr), ``rec`` (referring expression
comprehension among proposals), ``pope`` (object hallucination); beyond the paper, ``lvis_paco`` (Osprey's
open-vocabulary region classification: SS / S-IoU). Formats and commands: docs/EVAL.md."""
