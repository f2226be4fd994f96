"""Synthetic user-task pairs (LSRP §3.2.1): private user profiles D_u and public tasks t, seeded.

    pairs = make_pairs(num_users=16, tasks_per_user=2, seed=0, split="synthetic")   # the U-U-RAG index
    test  = make_pairs(num_users=6,  tasks_per_user=2, seed=0, split="real")        # held-out "real" users

How a user is made (``make_user``): one ``random.Random(f"{seed}:{split}:{i}")`` stream per
user draws a name, an age in 19-68, an occupation, a city, three personality traits, one
writing style and three private facts (health, family, money, hobbies...) from the lists
below.  Tasks are drawn without replacement from ``TASKS``: everyday writing and planning
requests phrased generically ("my hobby", "my job"), so the task can go to the cloud while
the details that make a good answer (which hobby, which job) live only in the profile.  The
paper's CoGenesis data has the same shape (a public task, a private profile); these lists
stand in for it offline.  Splits draw from separate streams, so "real" users never repeat
synthetic ones (names may coincide; profiles as a whole do not, with overwhelming odds).

``user_data`` is the text the device reads and UDRR (eq. 15) counts words of: the profile
values written as short sentences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST = (
    "Caleb",
    "Maya",
    "Jonas",
    "Priya",
    "Lucas",
    "Amara",
    "Diego",
    "Hana",
    "Oliver",
    "Fatima",
    "Mateo",
    "Ingrid",
    "Kwame",
    "Sofia",
    "Ravi",
    "Elena",
    "Tomás",
    "Yuki",
    "Noah",
    "Leila",
    "Ethan",
    "Zara",
    "Marcus",
    "Chloe",
)
LAST = (
    "Wright",
    "Okafor",
    "Lindqvist",
    "Sharma",
    "Moreau",
    "Nakamura",
    "García",
    "Kowalski",
    "Haddad",
    "Brennan",
    "Silva",
    "Novak",
    "Mensah",
    "Rossi",
    "Chen",
    "Andersen",
    "Dubois",
    "Patel",
    "Fischer",
    "Ibrahim",
)
OCCUPATIONS = (
    "full stack developer",
    "primary school teacher",
    "nurse",
    "bakery owner",
    "civil engineer",
    "graphic designer",
    "pharmacist",
    "bus driver",
    "marketing manager",
    "veterinarian",
    "accountant",
    "physiotherapist",
    "chef",
    "university student",
    "electrician",
    "journalist",
)
CITIES = (
    "Seattle",
    "Lyon",
    "Osaka",
    "Nairobi",
    "Manchester",
    "Porto",
    "Toronto",
    "Pune",
    "Melbourne",
    "Gdansk",
    "Austin",
    "Bergen",
    "Accra",
    "Valencia",
    "Denver",
    "Dublin",
)
TRAITS = (
    "detail-oriented",
    "outgoing",
    "quietly ambitious",
    "curious",
    "patient",
    "impulsive",
    "organised",
    "warm",
    "sarcastic",
    "anxious about deadlines",
    "competitive",
    "easy-going",
    "analytical",
    "creative",
)
STYLES = (
    "logical and structured, likes bullet points",
    "casual and funny, uses short sentences",
    "formal and polite",
    "warm and personal, tells small stories",
    "direct and brief, no small talk",
    "enthusiastic, uses exclamation marks",
)
FACTS = (
    "volunteers at an animal shelter on Saturdays",
    "is training for a first half marathon in October",
    "has two kids aged 4 and 7",
    "is allergic to peanuts",
    "is learning Japanese on evenings",
    "saves money for a house deposit",
    "manages type 1 diabetes",
    "plays bass guitar in a local band",
    "cares for an elderly father",
    "grows tomatoes and herbs on a balcony",
    "is recovering from a knee injury",
    "recently moved from another country",
    "is vegetarian",
    "paints watercolour landscapes",
    "is building an esports tracking app on the side",
    "rides a bike to work every day",
    "is afraid of flying",
    "has a golden retriever named Biscuit",
    "is studying for an accounting exam",
    "works night shifts twice a week",
    "collects vinyl records",
    "is planning a wedding next spring",
)
TASKS = (
    "Write a short social media post about my favourite hobby.",
    "Draft an email to my manager asking for next Friday off.",
    "Plan my weekend so that I can rest and still get things done.",
    "Suggest a simple weekly meal plan for me.",
    "Write a short bio about me for my personal website.",
    "Give me tips to prepare for a job interview in my field.",
    "Write a birthday message for my best friend.",
    "Help me set three realistic goals for the next month.",
    "Write a short cover letter for a job similar to my current one.",
    "Suggest a daily exercise routine that fits my life.",
    "Write a thank-you note to a neighbour who helped me.",
    "Recommend a holiday destination for me and explain why.",
    "Write a message inviting my colleagues to a team lunch.",
    "Explain how I could save more money each month.",
    "Write a short blog post about a challenge I am facing.",
    "Plan a productive morning routine for me.",
)


@dataclass(frozen=True)
class UserProfile:
    name: str
    age: int
    occupation: str
    city: str
    traits: tuple[str, ...]
    style: str
    facts: tuple[str, ...]

    def user_data(self) -> str:
        """D_u: the private data the device reads (and UDRR counts the words of)."""
        return (
            f"{self.name}, {self.age}, {self.occupation} in {self.city}. "
            f"Traits: {', '.join(self.traits)}. Writing style: {self.style}. "
            f"Private: {'; '.join(self.facts)}."
        )


@dataclass(frozen=True)
class UserTask:
    """One user-task pair (t, D_u): ``uid`` keys every record, cache entry and index row."""

    uid: str
    user: UserProfile
    task: str

    @property
    def user_data(self) -> str:
        return self.user.user_data()

    def text(self) -> str:
        """What U-U-RAG embeds (eq. 6-7): the task and the private profile, on the device."""
        return f"Task: {self.task}\nUser: {self.user_data}"

    def to_dict(self) -> dict:
        u = self.user
        return {
            "uid": self.uid,
            "task": self.task,
            "name": u.name,
            "age": u.age,
            "occupation": u.occupation,
            "city": u.city,
            "traits": list(u.traits),
            "style": u.style,
            "facts": list(u.facts),
        }


def make_user(seed: int, split: str, index: int) -> UserProfile:
    rng = random.Random(f"{seed}:{split}:{index}")
    return UserProfile(
        name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        age=rng.randint(19, 68),
        occupation=rng.choice(OCCUPATIONS),
        city=rng.choice(CITIES),
        traits=tuple(rng.sample(TRAITS, 3)),
        style=rng.choice(STYLES),
        facts=tuple(rng.sample(FACTS, 3)),
    )


def make_pairs(num_users: int, tasks_per_user: int, seed: int = 0, split: str = "synthetic") -> list[UserTask]:
    """``num_users`` users of ``split`` with ``tasks_per_user`` distinct tasks each (seeded, order stable)."""
    if not 1 <= tasks_per_user <= len(TASKS):
        raise ValueError(f"lsrp.tasks_per_user={tasks_per_user} must be in 1..{len(TASKS)} (the task bank's size).")
    pairs = []
    for i in range(num_users):
        user = make_user(seed, split, i)
        tasks = random.Random(f"{seed}:{split}:{i}:tasks").sample(TASKS, tasks_per_user)
        pairs += [UserTask(f"{split}-{seed}-u{i}-t{j}", user, t) for j, t in enumerate(tasks)]
    return pairs
