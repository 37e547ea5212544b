"""Region instruction data: the on-disk format, the paper's instruction pools and one converter per source.

The format is LLaVA's conversation JSON plus a ``regions`` list per sample (``docs/DATA.md``)::

    {"id": "coco_391895", "image": "coco/train2017/000000391895.jpg", "width": 640, "height": 360,
     "conversations": [{"from": "human", "value": "<image>\\nWhat category best describes ... <region1>? ..."},
                       {"from": "gpt", "value": "person"}, ...],
     "regions": [{"bbox": [x, y, w, h], "segmentation": [[...]], "category_id": 1, "ann_id": 42}, ...]}

Modules: ``instructions`` (Tables 21-25 and Table 1 of the paper, seeded sampling), ``common`` (region validation,
conversation assembly, counters), converters ``coco_style`` (COCO / LVIS / V3Det classification), ``vg`` (Visual
Genome captions and relationships), ``refcocog`` (captions and REC as a choice among regions), ``recapd`` (detailed
region captions) and ``llava_passthrough`` (image-level LLaVA data); ``build`` is the command line
(``python -m rgpt_llava.data.build``).
"""
