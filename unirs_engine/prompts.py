"""Prompt text of UniRS: the vicuna_v1 template, task tags, the paper's instructions and clue prompts.

Sources: the UniRS paper (Sec. III-C, Tables I and II) and VILA-1.5's `conv_vicuna_v1`.
Training and inference both build prompts here, so the two can never drift apart.
"""

from __future__ import annotations

import re

from .types import InputKind

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200   # placeholder id in input_ids; replaced by visual embeddings
IGNORE_INDEX = -100        # label value that the loss skips

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER, ASSISTANT = "USER", "ASSISTANT"
EOS_TEXT = "</s>"

TASK_TAGS = {
    InputKind.IMAGE: "Single image understanding:",
    InputKind.PAIR: "Remote sensing change captioning:",
    InputKind.SEQUENCE: "Video scene classification:",
}

# Table I (LEVIR-CC row) and the teaser figure's caption instruction.
CHANGE_INSTRUCTION = "Please identify whether there are obvious remote sensing image changes."
CHANGE_DESCRIBE_INSTRUCTION = (
    "Please briefly describe the main changes between the above two remote sensing images."
)
# GeoChat / RSVQA protocol suffix for short answers.
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."


def question_instruction(question: str, short_answer: bool = True) -> str:
    """A question about one image as the model reads it. A short answer adds the GeoChat/RSVQA suffix
    (once), as the VQA training data and benchmarks do: a model trained on short answers, like the
    demo model, may otherwise answer in another task's words ("no change" to "Is it rural or urban?")."""
    question = question.strip()
    if not short_answer or question.endswith(SHORT_ANSWER_SUFFIX):
        return question
    return f"{question}\n{SHORT_ANSWER_SUFFIX}"


# Table II: fixed prompts with which the frozen base VLM writes the clue.
CLUE_PROMPTS = {
    InputKind.IMAGE: "Describe this remote sensing image in detail.",
    InputKind.PAIR: "Please identify whether there are obvious remote sensing image changes.",
    InputKind.SEQUENCE: "Please classify the scene in this video captured by the UAV.",
}

# The 25 ERA event classes (lcmou.github.io/ERA_Dataset), the default label set.
ERA_CLASSES = (
    "post-earthquake", "flood", "fire", "landslide", "mudslide", "traffic collision",
    "traffic congestion", "harvesting", "ploughing", "constructing", "police chase", "conflict",
    "baseball", "basketball", "boating", "cycling", "running", "soccer", "swimming", "car racing",
    "party", "concert", "parade/protest", "religious activity", "non-event",
)

# LEVIR-CC style sentences meaning "nothing changed"; used to derive the changed flag.
_NO_CHANGE_PATTERNS = re.compile(
    r"\b(no (obvious )?(change|difference)s?|nothing (has )?changed|"
    r"(is|are|remains?|looks?|seems?) (almost |exactly )?the same|"
    r"(seem|look)s? (almost )?identical|unchanged|without any change)\b"
)


def classify_instruction(classes: tuple[str, ...] | list[str] = ERA_CLASSES) -> str:
    """Table I (ERA row): the instruction listing the candidate classes."""
    if not classes:
        raise ValueError("classify_instruction needs at least one class")
    return "Classify the given video in one of the following classes. Classes: " + ", ".join(classes) + "."


def user_message(kind: InputKind, instruction: str, n_images: int, clue: str | None = None,
                 task_tag: bool = True) -> str:
    """`<image>` markers, task tag, instruction, then 'Clue: …' (paper Sec. IV-A, prompt construction).

    `n_images` is the number of `<image>` slots: 1 for an image or a pair, N for N frames.
    The base VLM writing a clue gets no task tag (`task_tag=False`).
    """
    if n_images < 1:
        raise ValueError("a prompt needs at least one <image> slot")
    instruction = instruction.replace(IMAGE_TOKEN, "").strip()
    text = f"{TASK_TAGS[kind]} {instruction}" if task_tag else instruction
    if clue:
        text += f"\nClue: {clue.strip()}"
    return f"{IMAGE_TOKEN}\n" * n_images + text


def conversation(user_msg: str, answer: str | None = None) -> str:
    """vicuna_v1 with its system prompt; ends with 'ASSISTANT:' when there is no answer yet."""
    prompt = f"{SYSTEM} {USER}: {user_msg} {ASSISTANT}:"
    return prompt if answer is None else f"{prompt} {answer}{EOS_TEXT}"


def encode(tokenizer, user_msg: str, answer: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids with IMAGE_TOKEN_INDEX at each `<image>`, and labels that keep only the answer.

    Chunks between `<image>` markers are tokenised separately (as VILA's tokenizer_image_token),
    with one BOS at the start. The answer (with its EOS) is tokenised on its own so the prompt
    part is identical at training and inference time.
    """
    prompt = conversation(user_msg)
    ids = [tokenizer.bos_token_id]
    for i, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            # verbose=False: no "longer than the maximum" log; the engine measures and refuses such
            # prompts itself (engine._check_prompt_fits), training truncates to its max_length.
            ids.extend(tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    if answer is not None:
        answer_ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        answer_ids.append(tokenizer.eos_token_id)
        ids += answer_ids
        labels += answer_ids
    return ids, labels


def says_no_change(caption: str) -> bool:
    """True when a change caption states that nothing changed (LEVIR-CC phrasing)."""
    return bool(_NO_CHANGE_PATTERNS.search(caption.lower()))


def match_class(answer: str, classes: tuple[str, ...] | list[str]) -> str | None:
    """The class named in a free-text answer ('This is a video about police chase.'), longest first."""
    text = answer.lower()
    for name in sorted(classes, key=len, reverse=True):
        if re.search(r"(?<![\w-])" + re.escape(name.lower()) + r"(?![\w-])", text):
            return name
    return None
