"""A real ``CLIPTokenizer`` (byte-level BPE) built offline for models dbexp creates itself.

SD's own tokenizer comes with its weights; the tiny and random-weight models need one that
needs no download. Every byte is in the vocabulary, so any prompt tokenizes; merges are
learnt on a word list until each listed word is one token, as common words are with CLIP.

The merges are learnt here rather than with ``tokenizers``' ``BpeTrainer``: that trainer breaks
frequency ties in hash order, so the same word list gave a different vocabulary in every
process — and a model built from config must be the same model every time.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer: the byte alphabet (plain and word-final) plus one token per listed word."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [BOS, EOS, *alphabet, *(c + END_OF_WORD for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges = learn_merges(words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Classic BPE training (most frequent adjacent pair first, ties broken by the pair itself),
    run until every word is a single symbol. Deterministic for a given set of words."""
    unique = sorted({w.lower() for w in words if w})
    for word in unique:
        if not re.fullmatch(r"[!-~]+", word):  # printable ASCII maps to itself in byte-level BPE
            raise ValueError(f"tokenizer word {word!r}: only printable ASCII without spaces")
    segmented = [[*word[:-1], word[-1] + END_OF_WORD] for word in unique]
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for symbols in segmented for pair in zip(symbols, symbols[1:], strict=False))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        segmented = [_merge(symbols, best) for symbols in segmented]


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def words_of(texts: Iterable[str]) -> list[str]:
    """The lower-case words of some texts, as CLIP's pre-tokenizer would split them."""
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())})
