"""Export of the bias-augmented gallery ``[g, stat(g)]`` for any inner-product engine.

:mod:`~service.algorithms.augment` turns galleries and queries into coordinates (pure numpy);
:mod:`~service.export.chunked` computes the augmented gallery of a huge memory-mapped gallery in
parallel chunks; :mod:`~service.export.writers` writes it to Parquet;
:mod:`~service.export.commands` is ``hubless export``.
"""

from service.algorithms.augment import (
    EXTRA_DIMS,
    activation_flags,
    gallery_coordinates,
    method_recipes,
    query_coordinates,
    query_plan,
    score_offsets,
    view_coordinates,
)

__all__ = [
    "EXTRA_DIMS",
    "activation_flags",
    "gallery_coordinates",
    "method_recipes",
    "query_coordinates",
    "query_plan",
    "score_offsets",
    "view_coordinates",
]
