"""The DreamBooth paper's metrics (Ruiz et al., CVPR 2023) as small functions on embeddings.

* DINO / CLIP-I: mean cosine similarity over all (generated, real) pairs of image embeddings.
* CLIP-T: mean cosine between each image and its prompt (the prompt without the identifier).
* PRES: DINO between images of the bare class prompt and the real subject (lower: less leakage).
* DIV: 1 − mean pairwise DINO similarity among images of one prompt, averaged over prompts.
  (The paper uses LPIPS, which needs torchvision; this is dbexp's documented substitute.)
* Real-images reference: the same similarity among the real photos, leave-one-out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All pairwise cosines between rows of ``a`` (n×d) and ``b`` (m×d)."""
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def mean_pairwise_similarity(generated: torch.Tensor, real: torch.Tensor) -> float:
    """DINO / CLIP-I: the mean cosine over every (generated, real) pair."""
    return cosine_matrix(generated, real).mean().item()


def text_alignment(images: torch.Tensor, texts: torch.Tensor) -> float:
    """CLIP-T: the mean cosine between image i and the text it was made from (row i of each)."""
    if images.shape[0] != texts.shape[0]:
        raise ValueError("CLIP-T needs one text embedding per image")
    return (F.normalize(images.double(), dim=-1) * F.normalize(texts.double(), dim=-1)).sum(-1).mean().item()


def within_set_similarity(embeddings: torch.Tensor) -> float:
    """Mean cosine over distinct pairs (i ≠ j) of one set; needs at least two members."""
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError("a similarity within a set needs at least two members")
    sims = cosine_matrix(embeddings, embeddings)
    return ((sims.sum() - sims.diagonal().sum()) / (n * (n - 1))).item()


def diversity(per_prompt: Sequence[torch.Tensor]) -> float:
    """DIV: 1 − mean pairwise DINO similarity within each prompt's images, averaged over prompts."""
    return sum(1.0 - within_set_similarity(e) for e in per_prompt) / len(per_prompt)


def real_reference(real: torch.Tensor) -> float:
    """The real photos scored like generated ones: each against the others (leave-one-out), averaged.

    With every photo compared to all others this equals the mean over distinct pairs.
    """
    return within_set_similarity(real)
