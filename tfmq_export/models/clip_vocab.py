"""A CLIP BPE tokenizer over a small word list, written by us (no vocabulary download).

Why: a text-to-image pipeline folder needs a real ``CLIPTokenizer`` (diffusers and transformers load
it from ``vocab.json`` + ``merges.txt``), and the bundled ``digits-text`` model and the tests' tiny
pipelines need one offline. The vocabulary holds every lowercase letter (alone and word-final,
``</w>``) and a whole-word token for each word of ``words``, reached by a left-to-right chain of
merges, so "a handwritten digit seven" is four tokens and any other lowercase word still tokenizes
(letter by letter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["BOS", "DIGIT_NAMES", "DIGIT_WORDS", "EOS", "build_clip_tokenizer", "clip_vocab"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: The words kept whole: the digits-text prompts and the tests' prompts.
DIGIT_WORDS = ("a", "handwritten", "digit", "of", "the", "number", "blurry", "photo", *DIGIT_NAMES)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def clip_vocab(words: Sequence[str] = DIGIT_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a CLIP BPE tokenizer that keeps each of ``words`` (lowercase letters) whole."""
    tokens: list[str] = [*_LETTERS, *(c + "</w>" for c in _LETTERS)]
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:  # left to right: ((h a) n) d ...
            merge = (parts[0], parts[1])
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1], *parts[2:]]
            if parts[0] not in tokens:
                tokens.append(parts[0])
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer(max_length: int = 16, words: Sequence[str] = DIGIT_WORDS, pad_token: str = EOS) -> Any:
    """A ``transformers.CLIPTokenizer`` over ``clip_vocab(words)`` with ``model_max_length`` tokens."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token=pad_token)
