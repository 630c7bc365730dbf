"""Made-up news prose for the benchmarks' entries, English or Chinese, from a seeded RNG.

Each benchmark keeps its own word lists (so its data stays what its earlier runs measured);
the sentence, phrase and slug shapes are shared here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

ZH_PUNCT = ("，", "，", "、", "；")
SECTIONS = ("news", "business", "world", "tech", "culture", "sport", "opinion")


@dataclass(frozen=True)
class Prose:
    words: Sequence[str]
    zh_words: Sequence[str]

    def sentence(self, rng: random.Random, chinese: bool) -> str:
        if chinese:
            words = rng.choices(self.zh_words, k=rng.randint(6, 14))
            for at in range(3, len(words), 4):
                words[at] += rng.choice(ZH_PUNCT)
            return "".join(words) + "。"
        text = " ".join(rng.choices(self.words, k=rng.randint(8, 20)))
        return text[0].upper() + text[1:] + "."

    def phrase(self, rng: random.Random, chinese: bool) -> str:
        if chinese:
            return "".join(rng.choices(self.zh_words, k=rng.randint(2, 4)))
        return " ".join(rng.choices(self.words, k=rng.randint(2, 4)))

    def slug(self, rng: random.Random) -> str:
        return "-".join(rng.choices(self.words, k=3)) + f"-{rng.randint(1000, 99999)}"
