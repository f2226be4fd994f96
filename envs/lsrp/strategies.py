"""The leader (cloud) prompts of LSRP §3.2 and the subordinate (device) prompt of eq. 1.

Path-goal leadership theory gives the cloud four ways to guide the device; each is a system
prompt P_s for the cloud, which sees only the public task t (never the user's private data):

    g_s = LLM(P_s, t)                         (eq. 4, one guideline per strategy s)
    y   = SLM(t, D_u, g_s)                    (eq. 1, the device answers with the private data D_u)

``GENERAL`` is the general leader prompt P_g of eq. 10 (the paper's SMFB-DPO prompt and its
"LLM guide SLM" baseline).  ``choice_prompt`` is the "SLM-choose" baseline of Table 4: the
device model itself picks a strategy for a user-task pair.
"""

from __future__ import annotations

STRATEGIES = ("directive", "supportive", "participative", "achievement_oriented")

_PRIVACY = (
    "You are a cloud assistant that guides a small on-device assistant. You see only the user's task; "
    "the user's private profile stays on their device, and the on-device assistant will read it. "
    "Write a short guideline (at most 6 lines) that the on-device assistant will follow to write the answer. "
    "Do not write the answer itself. "
)

LEADER_PROMPTS = {
    "directive": _PRIVACY
    + (
        "Use a DIRECTIVE leadership style: give clear, numbered, step-by-step instructions that say exactly "
        "what to write, in which order, and which of the user's details to insert at each step."
    ),
    "supportive": _PRIVACY
    + (
        "Use a SUPPORTIVE leadership style: give general direction and encouragement, suggest several possible "
        "angles, and leave the on-device assistant free to personalise the answer to the user's life and tone."
    ),
    "participative": _PRIVACY
    + (
        "Use a PARTICIPATIVE leadership style: propose an outline, then explicitly ask the on-device assistant "
        "to contribute the user's own experiences, preferences and wording to each part."
    ),
    "achievement_oriented": _PRIVACY
    + (
        "Use an ACHIEVEMENT-ORIENTED leadership style: set high standards for the answer (specific, vivid, "
        "well structured, clearly tied to the user's goals) and challenge the on-device assistant to meet them."
    ),
}

GENERAL = _PRIVACY + (
    "Choose whatever guidance best fits the task: steps to follow, angles to explore, parts for the on-device "
    "assistant to fill with the user's details, and the standard the answer should meet."
)

SUBORDINATE_SYSTEM = (
    "You are a personal assistant running on the user's own device. You can read the user's private profile. "
    "Follow the guideline from the cloud assistant and personalise the answer with the user's details."
)


def leader_messages(strategy: str, task: str) -> list[dict]:
    """The chat the leader sees for ``strategy`` (one of STRATEGIES, or "general" for P_g): the task only."""
    if strategy == "general":
        system = GENERAL
    elif strategy in LEADER_PROMPTS:
        system = LEADER_PROMPTS[strategy]
    else:
        raise ValueError(f"Unknown leader strategy {strategy!r}: use one of {', '.join(STRATEGIES)} or general.")
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Task: {task}"}]


def device_messages(task: str, user_data: str, guideline: str) -> list[dict]:
    """The chat the device sees (eq. 1): the task, the private user data D_u and the leader's guideline."""
    user = (
        f"User profile (private, stays on this device):\n{user_data}\n\n"
        f"Task: {task}\n\n"
        f"Guideline from the cloud assistant:\n{guideline.strip()}\n\n"
        "Write the final answer for the user."
    )
    return [{"role": "system", "content": SUBORDINATE_SYSTEM}, {"role": "user", "content": user}]


CHOICE_LETTERS = ("A", "B", "C", "D")


def choice_prompt(task: str, user_data: str) -> list[dict]:
    """SLM-choose (Table 4): the device picks the leader strategy, answering with one letter A-D."""
    options = "\n".join(
        f"{letter}. {name.replace('_', '-')}: {desc}"
        for letter, name, desc in zip(
            CHOICE_LETTERS,
            STRATEGIES,
            (
                "clear step-by-step instructions",
                "general direction and encouragement, freedom to personalise",
                "an outline that you complete with the user's own experiences",
                "high standards and a challenge to exceed them",
            ),
        )
    )
    user = (
        f"User profile:\n{user_data}\n\nTask: {task}\n\n"
        f"Which kind of guidance from a cloud assistant would help you most with this task?\n{options}\n"
        "Answer with one letter."
    )
    return [{"role": "user", "content": user}]
