"""Prompt templates of the route environment (SPEC §2, paper templates paraphrased).

Every template tells the device model how to answer and how to escalate: the
escalation tag ``<unknown> I need external assistance </unknown>`` at the end of
its response hands the whole problem to the cloud.
"""

from __future__ import annotations

ESCALATION = "<unknown> I need external assistance </unknown>"

MATH = (
    "Solve the following math problem step by step (\"Step 1: ...\", \"Step 2: ...\"). "
    "Put your final answer in \\boxed{{}}.\n"
    "If you cannot solve it after {max_steps} steps, stop and return " + ESCALATION + "\n\n"
    "Problem: {question}"
)

COUNTDOWN = (
    "{question}\n"
    "Show your reasoning in <think> </think> tags and return the final equation in <answer> </answer> tags, "
    "for example <answer> (1 + 2) / 3 </answer>.\n"
    "You may ask for external assistance at the end, e.g. " + ESCALATION
)

ARITHMETIC = "{question}"
ARITHMETIC_SYSTEM = (
    "Compute the result and give the final answer in \\boxed{{}}. If you are not sure you can compute it "
    "correctly, reply only with " + ESCALATION
)

TEMPLATES = {"math": MATH, "countdown": COUNTDOWN, "arithmetic": ARITHMETIC}

# Worked examples given as earlier chat turns.  A 135M model does not follow the
# escalation instruction from words alone (it never emits the tag); two solved and two
# escalated examples make both actions appear in its samples, which RL then shapes.
FEW_SHOT = {
    "arithmetic": [
        ("What is 3 + 4?", "3 + 4 = 7. \\boxed{7}"),
        ("What is 4821 * 967?", ESCALATION),
        ("What is 6 * 2?", "6 * 2 = 12. \\boxed{12}"),
        ("What is 738 * 56?", ESCALATION),
    ],
}


def render(template: str, question: str, max_steps: int = 6) -> str:
    return TEMPLATES[template].format(question=question, max_steps=max_steps)


SYSTEMS = {"arithmetic": ARITHMETIC_SYSTEM.format()}


def messages(template: str, question: str, max_steps: int = 6, few_shot: bool = True, system: str | None = None) -> list[dict]:
    """Chat messages: system prompt (the template's own unless given), worked examples, then the problem."""
    system = system or SYSTEMS.get(template)
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in FEW_SHOT.get(template, []) if few_shot else []:
        msgs += [{"role": "user", "content": render(template, q, max_steps)}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": render(template, question, max_steps)}]


CLOUD_SYSTEM = "You are an expert problem solver. Answer the problem; put the final answer in \\boxed{}."
