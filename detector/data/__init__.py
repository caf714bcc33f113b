"""Detection data: COCO-format datasets (``coco``: COCO, Objects365), ``transforms`` and batching,
``samplers``, the ``synthetic`` set and ``prepare`` (resolving a dataset's files).

Nothing is imported here, so a config that names a dataset can be read without torch.
"""
