"""RegionShapes: the CPU demo that learns (docs/SHAPES.md).

- ``generator``       the synthetic region dataset (exact masks, conversations, held-out evaluation files);
- ``benchmark``       the demo's driver: data, tiny models, both training stages, evaluation, table, PNG;
- ``pretrain_tower``  image-level pretraining of the small CLIP-style tower before it is frozen;
- ``tower/``          the shipped pretrained tower (this world's CLIP).

Nothing in ``rgpt_llava.train``, ``rgpt_llava.data`` or ``rgpt_llava.eval`` imports from here: the demo uses the
product's entry points as a user would.
"""
