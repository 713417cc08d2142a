"""What the LLM teacher is asked and how its reply is read: the versioned prompt (the version is part of every
cache key), a paper's text in the prompt, and the score parsed out of a reply (0-1, 0-10 or 0-100 scales, with or
without reasoning before it)."""

from __future__ import annotations

import json
import math
import re

PROMPT_VERSION = "relatedness-v1"
SYSTEM_PROMPT = "You are an expert reviewer of scientific papers. You judge how closely two papers are related."
USER_PROMPT = """Rate how related the research topics of these two arXiv papers are, from 0 to 1:
0 = unrelated fields, 0.5 = the same broad field but different problems, 1 = the same specific topic.
Answer with the number only.

Paper A
{paper_a}

Paper B
{paper_b}"""


_NUMBER = r"(-?\d+(?:\.\d+)?|-?\.\d+)"
_SCORE = re.compile(_NUMBER + r"\s*(?:(%)|/\s*" + _NUMBER + r")?")
_LABELLED = re.compile(r"(?:score|rating|relatedness)\W{0,3}\s*" + _NUMBER + r"\s*(?:(%)|/\s*" + _NUMBER + r")?", re.I)
_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def paper_prompt_text(title: str, abstract: str) -> str:
    """How one paper appears in the prompt (and in the cache key)."""
    return f"Title: {' '.join(title.split())}\nAbstract: {' '.join(abstract.split())}"


def build_messages(paper_a: str, paper_b: str) -> list[dict[str, str]]:
    """The chat messages asking for the relatedness of two papers (:data:`PROMPT_VERSION`)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_PROMPT.format(paper_a=paper_a, paper_b=paper_b)},
    ]


def _scaled(number: str, percent: str | None, scale: str | None) -> float:
    value = float(number)
    if percent:
        return value / 100
    if scale:
        denominator = float(scale)
        if denominator <= 0:
            raise ValueError(f"a score out of {scale}")
        return value / denominator
    return value


def parse_score(reply: str) -> float:
    """The relatedness score in a model's reply, in [0, 1]: a bare number (``0.7``), a labelled one (``Score:
    0.7``, ``{"score": 0.7}``), a fraction (``7/10``) or a percentage (``70%``), after any ``<think>`` block.
    Raises ValueError for a reply with no such number, an ambiguous one, or a value outside [0, 1]."""
    text = _THINK.sub("", reply).strip().strip("`*\"' ")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for key in ("score", "relatedness", "rating"):
                if isinstance(obj.get(key), int | float) and not isinstance(obj.get(key), bool):
                    return _in_unit_range(float(obj[key]), reply)
    labelled = _LABELLED.search(text)
    first = _SCORE.match(text)
    if labelled:
        value = _scaled(*labelled.groups())
    elif first:  # the reply starts with the number
        value = _scaled(*first.groups())
    else:
        found = _SCORE.findall(text)
        if len(found) != 1:
            what = "no number" if not found else f"{len(found)} numbers and none labelled as the score"
            raise ValueError(f"{what} in the reply {reply[:200]!r}")
        value = _scaled(*found[0])
    return _in_unit_range(value, reply)


def _in_unit_range(value: float, reply: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"the score {value} in the reply {reply[:200]!r} is outside [0, 1]")
    return value
