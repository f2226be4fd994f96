"""Prompt templates of the route and query environments (docs/method.md §2, paper templates paraphrased).

Every template tells the device model how to answer and how to escalate: the
escalation tag ``<unknown> I need external assistance </unknown>`` at the end of
its response hands the whole problem to the cloud.  The query mode (``mode="query"``)
adds mid-reasoning help: ``<query>sub-question</query>`` stops generation, the
cloud's answer comes back as ``<response>...</response>`` and the device goes on.

``escalation=False`` (``task.escalation=false``) is the task-tuning prompt: the same templates and worked examples
with the escalation option taken out (``SOLVE_TEMPLATES``, ``SOLVE_SYSTEMS``, ``SOLVE_FEW_SHOT``): the system
prompt says only how to answer, and every worked example is solved.  It trains and evaluates the paper's
"task tuning" device, the base model of the TT baselines (docs/evaluation.md).
"""

from __future__ import annotations

ESCALATION = "<unknown> I need external assistance </unknown>"

MATH_HOWTO = (
    'Solve the following math problem step by step ("Step 1: ...", "Step 2: ..."). '
    "Put your final answer in \\boxed{{}}.\n"
)
MATH = MATH_HOWTO + "If you cannot solve it after {max_steps} steps, stop and return " + ESCALATION + "\n\n"
MATH += "Problem: {question}"

COUNTDOWN_HOWTO = (
    "{question}\n"
    "Show your reasoning in <think> </think> tags and return the final equation in <answer> </answer> tags, "
    "for example <answer> (1 + 2) / 3 </answer>."
)
COUNTDOWN = COUNTDOWN_HOWTO + "\nYou may ask for external assistance at the end, e.g. " + ESCALATION

ARITHMETIC = "{question}"
ARITHMETIC_HOWTO = "Compute the result and give the final answer in \\boxed{{}}."
ARITHMETIC_SYSTEM = (
    ARITHMETIC_HOWTO + " If you are not sure you can compute it correctly, reply only with " + ESCALATION
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

# The task-tuning prompt (escalation=False): how to answer, no escalation option; the escalated worked examples
# are solved in the same one-line form.
SOLVE_TEMPLATES = {"math": MATH_HOWTO + "\nProblem: {question}", "countdown": COUNTDOWN_HOWTO, "arithmetic": ARITHMETIC}
SOLVE_FEW_SHOT = {
    "arithmetic": [
        ("What is 3 + 4?", "3 + 4 = 7. \\boxed{7}"),
        ("What is 4821 * 967?", "4821 * 967 = 4661907. \\boxed{4661907}"),
        ("What is 6 * 2?", "6 * 2 = 12. \\boxed{12}"),
        ("What is 738 * 56?", "738 * 56 = 41328. \\boxed{41328}"),
    ],
}


# Query mode ---------------------------------------------------------------------------------------

QUERY_HOWTO = (
    "You may ask a stronger model for help at any point: write <query>your question</query>, its answer "
    "comes back as <response>...</response>, then continue. Each query costs, so ask only what you cannot do."
)

QUERY_TEMPLATES = {
    "math": (
        'Solve the following math problem step by step ("Step 1: ...", "Step 2: ..."). '
        "Put your final answer in \\boxed{{}}.\n" + QUERY_HOWTO + "\n"
        "If you cannot solve it even with help, stop and return " + ESCALATION + "\n\n"
        "Problem: {question}"
    ),
    "countdown": COUNTDOWN + "\n" + QUERY_HOWTO,
    "arithmetic": ARITHMETIC,
}
ARITHMETIC_QUERY_SYSTEM = (
    "Compute the result and give the final answer in \\boxed{{}}. If a calculation is too hard for you, ask a "
    "calculator: write <query>the expression</query> and its value comes back as <response>...</response>; "
    "then give the final answer. If you cannot solve it at all, reply only with " + ESCALATION
)

# A 135M model needs worked examples to use a tag at all (see FEW_SHOT): two solved
# examples and two that ask the calculator a sub-expression, then copy its value.
# "</query><response>" is written without a space, as the device sees it after the
# environment inserts the response (envs/query.py).
QUERY_FEW_SHOT = {
    "arithmetic": [
        ("What is 3 + 4?", "3 + 4 = 7. \\boxed{7}"),
        (
            "What is 4821 * 967?",
            "<query>4821 * 967</query><response>4661907</response> 4821 * 967 = 4661907. \\boxed{4661907}",
        ),
        ("What is 6 * 2?", "6 * 2 = 12. \\boxed{12}"),
        ("What is 738 * 56?", "<query>738 * 56</query><response>41328</response> 738 * 56 = 41328. \\boxed{41328}"),
    ],
}


def render(template: str, question: str, max_steps: int = 6, mode: str = "route", escalation: bool = True) -> str:
    if mode == "query":
        table = QUERY_TEMPLATES
    else:
        table = TEMPLATES if escalation else SOLVE_TEMPLATES
    return table[template].format(question=question, max_steps=max_steps)


SYSTEMS = {"arithmetic": ARITHMETIC_SYSTEM.format()}
SOLVE_SYSTEMS = {"arithmetic": ARITHMETIC_HOWTO.format()}
QUERY_SYSTEMS = {"arithmetic": ARITHMETIC_QUERY_SYSTEM.format()}


def messages(
    template: str,
    question: str,
    max_steps: int = 6,
    few_shot: bool = True,
    system: str | None = None,
    mode: str = "route",
    escalation: bool = True,
) -> list[dict]:
    """Chat messages: system prompt (the template's own unless given), worked examples, then the problem.

    ``mode="query"`` uses the query-mode prompts (``<query>`` help and ``<unknown>`` escalation).
    ``escalation=False`` (route mode): the task-tuning prompt, with no escalation option anywhere."""
    if mode == "query" and not escalation:
        raise ValueError("the query-mode prompt always offers escalation: use mode='route' with escalation=False")
    if mode == "query":
        systems, few = QUERY_SYSTEMS, QUERY_FEW_SHOT
    else:
        systems, few = (SYSTEMS, FEW_SHOT) if escalation else (SOLVE_SYSTEMS, SOLVE_FEW_SHOT)
    system = system or systems.get(template)
    shots = few.get(template, []) if few_shot else []
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in shots:
        msgs += [
            {"role": "user", "content": render(template, q, max_steps, mode, escalation)},
            {"role": "assistant", "content": a},
        ]
    return msgs + [{"role": "user", "content": render(template, question, max_steps, mode, escalation)}]


# Cloud data augmentation for task tuning (envs/augment.py; CDCDA-PLM, seed 004 §3 "Data augmentation
# with server LLM") ---------------------------------------------------------------------------------

# The paper's prompt, paraphrased: "Generate an Input and Response pairs semantically similar to the
# following example, no need to explain. Input: [], Response: []."  Asked once per example for k pairs.
AUGMENT_PROMPT = (
    "Generate {k} Input and Response pairs semantically similar to the following example, no need to explain. "
    'Write each pair as a line starting with "Input:" followed by a line starting with "Response:". {rule}\n\n'
    "Input: {input}\nResponse: {response}"
)
# What a Response must look like: the device's own answer format for the task (the template it trains on).
AUGMENT_RULES = {
    "arithmetic": "Each Input asks for one calculation like the example's; each Response shows the calculation "
    "and ends with the exact result in \\boxed{}.",
    "math": "Each Input is a new problem of the same kind; each Response is a full step-by-step solution "
    '("Step 1: ...", "Step 2: ...") that ends with the final answer in \\boxed{}.',
    "countdown": "Each Input gives four numbers and a target in the example's words; each Response reasons in "
    "<think> </think> and gives one equation in <answer> </answer> that uses each number exactly once.",
}
