"""A deterministic scripted 'model' for synth tests: it answers each prompt type of the pipeline in the
format the prompt asks for, as a function of the prompt and the sampling seed (so reruns are identical).

`scripted_answer` is an EchoLLM responder; serve it through tests/fake_openai_server.py for end-to-end tests.
"""

from __future__ import annotations

import random
import re

from selfctx.llm.base import ChatRequest
from selfctx.llm.echo import EchoLLM

WORDS = (  # noqa: SIM905
    "river stone lantern copper orchard meadow harbor violet engine signal forest marble candle silver "
    "garden thunder ribbon compass glacier falcon velvet ember canyon willow beacon saffron quartz"
).split()


def _rng(request: ChatRequest) -> random.Random:
    return random.Random(f"{request.sampling.seed}|{request.messages[-1].content}")


def _passage_of(prompt: str) -> str:
    m = re.search(r"Passage(?: A| 1)?:\n(.*?)\n\n", prompt, re.DOTALL)
    return m.group(1) if m else ""


def _write_passage(prompt: str, rng: random.Random) -> str:
    noun = re.search(r"about (.+?)\. Use about", prompt) or re.search(r"mentions (.+?)\. Use about", prompt)
    subject = noun.group(1) if noun else "something"
    sentences = []
    for _ in range(rng.randint(5, 8)):
        words = rng.sample(WORDS, 6)
        sentences.append(
            f"The {subject} near the {words[0]} held a {words[1]} {words[2]} "
            f"and {rng.randint(2, 999)} {words[3]}s."
        )
    fact = re.search(r'Include this exact sentence: "(.+?)"', prompt)
    if fact and rng.random() < 0.5:
        sentences.insert(1, fact.group(1))
    detail = re.search(r" Mention (.+?)\. Write only", prompt)
    if detail:
        sentences.insert(2, f"Everyone remembered the {detail.group(1)}.")
    return " ".join(sentences)


def scripted_answer(request: ChatRequest) -> str:
    prompt = request.messages[-1].content
    rng = _rng(request)
    if "Invent two short Python variable names" in prompt:
        a, b = rng.sample(WORDS, 2)
        k = rng.randint(0, 99999)
        return f"{a}_{k}, {b}_{k}"
    if "Write a similar short Python function" in prompt:
        k = rng.randint(0, 99999)
        op = rng.choice("+-*")
        return f"def combine_{k}(x, y):\n    return x {op} y"
    if "what does the function" in prompt:
        return "It combines its two arguments arithmetically and returns the result."
    bridge = re.match(r"Write one sentence about (.+?) that mentions (.+?)\. Write only", prompt)
    if bridge:
        noun, detail = bridge.groups()
        return f"The {noun} was once compared with {detail} by {rng.choice(WORDS)} makers."
    if prompt.startswith("Write "):
        return _write_passage(prompt, rng)
    if "Rewrite this passage" in prompt:
        text = _passage_of(prompt)
        words = text.split()
        for _ in range(2):
            i = rng.randrange(len(words))
            words[i] = rng.choice(WORDS)
        return " ".join(words)
    if "Compare the two passages" in prompt:
        return (
            "Similarities: both describe the same subject and setting.\n"
            "Differences: two details were changed."
        )
    if "Name one key detail" in prompt:
        words = [w.strip(".,") for w in _passage_of(prompt).split() if w.strip(".,").isalpha() and len(w) > 4]
        return rng.choice(words)
    if "Write only the question." in prompt:
        text = _passage_of(prompt) or prompt
        word = rng.choice([w.strip(".,") for w in text.split() if len(w.strip(".,")) > 4])
        return f"What did the passage say about the {word}?"
    if "Answer the question in one short sentence" in prompt:
        text = prompt.split("\nQuestion:")[0]
        sentence = rng.choice(re.split(r"(?<=\.)\s+", text.strip())[1:] or [text])
        return " ".join(sentence.rstrip(".").split()[-4:]) + "."
    if "Question:" in prompt:
        text = _passage_of(prompt) or prompt
        sentence = rng.choice(re.split(r"(?<=\.)\s+", text.strip()))
        words = sentence.rstrip(".").split()
        return f"Question: What did the passage say about the {words[-1]}?\nAnswer: {' '.join(words[-4:])}"
    if "Summarize this passage" in prompt:
        return re.split(r"(?<=\.)\s+", _passage_of(prompt).strip())[0]
    return "I'm sorry, I cannot help with that."


def scripted_llm(**kw: object) -> EchoLLM:
    return EchoLLM(scripted_answer, model_id="scripted", **kw)  # type: ignore[arg-type]
