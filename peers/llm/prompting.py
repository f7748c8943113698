"""Prompt formats (pure functions): chat template messages and a few-shot block for base models."""

from __future__ import annotations

__all__ = [
    "SYSTEM_PROMPT", "FEW_SHOT_EXAMPLES", "chat_messages", "few_shot_prompt", "clean_answer",
]

SYSTEM_PROMPT = (
    "You are a concise assistant. Answer the user's question with a short factual answer "
    "in one sentence."
)

# Deliberately disjoint from typical test questions so the model cannot copy an answer.
FEW_SHOT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen."),
    ("What is the chemical symbol for silver?", "The chemical symbol for silver is Ag."),
)


def chat_messages(
    question: str,
    system: str = SYSTEM_PROMPT,
    examples: tuple[tuple[str, str], ...] = FEW_SHOT_EXAMPLES,
) -> list[dict[str, str]]:
    """Chat messages: system instruction, the examples as prior turns, then ``question``.

    The example turns matter for small instruct models: without them SmolLM2-135M rambles and
    gets e.g. "largest planet" wrong; with them it answers in one correct sentence.
    """
    messages = [{"role": "system", "content": system}]
    for eq, ea in examples:
        messages += [{"role": "user", "content": eq}, {"role": "assistant", "content": ea}]
    messages.append({"role": "user", "content": " ".join(question.split())})
    return messages


def few_shot_prompt(question: str, examples: tuple[tuple[str, str], ...] = FEW_SHOT_EXAMPLES) -> str:
    """A ``Question: ...\\nAnswer: ...`` block ending in an open ``Answer:`` for ``question``."""
    q = " ".join(question.split())
    shots = "".join(f"Question: {eq}\nAnswer: {ea}\n\n" for eq, ea in examples)
    return f"{shots}Question: {q}\nAnswer:"


def clean_answer(text: str, stop_at_newline: bool) -> str:
    """Cut at the first newline (few-shot) and strip whitespace."""
    if stop_at_newline:
        text = text.lstrip().split("\n", 1)[0]
    return text.strip()
