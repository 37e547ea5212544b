"""Scorers of RegionGPT's region benchmarks (paper Sec. 4): ``coco_cls`` (region classification: accuracy,
synonym-aware accuracy, COCOeval mAP), ``caption`` (BLEU / METEOR / ROUGE-L / CIDEr), ``rec`` (referring expression
comprehension among proposals), ``pope`` (object hallucination). Formats and commands: docs/EVAL.md."""
