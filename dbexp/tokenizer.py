"""A real ``CLIPTokenizer`` (byte-level BPE) built offline for models dbexp creates itself.

SD's own tokenizer comes with its weights; the tiny and random-weight models need one that
needs no download. Every byte is in the vocabulary, so any prompt tokenizes; words of the
given word list get merges, so common prompt words are one token each, as with CLIP's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary is the byte alphabet plus one token per word."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: dict[tuple[str, str], None] = {}
    for word in sorted({w.lower() for w in words if w}):
        if not re.fullmatch(r"[!-~]+", word):  # printable ASCII maps to itself in byte-level BPE
            raise ValueError(f"tokenizer word {word!r}: only printable ASCII without spaces")
        pieces = list(word)
        # Merge left to right: ("p","h") → "ph", ("ph","o") → "pho", … up to "photo</w>".
        symbols = [*pieces[:-1], pieces[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            merges.setdefault(pair, None)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = [pair[0] + pair[1], *symbols[2:]]
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=model_max_length)


def words_of(texts: Iterable[str]) -> list[str]:
    """The lower-case words of some texts, as CLIP's pre-tokenizer would split them."""
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())})
