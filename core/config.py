"""The pieces every config section is made of: ``option`` (a field with help text), ``Section`` (choices from the
``Literal`` annotations, checked by ``validate``), ``ConfigError``, and the secret checks for values.

Each section lives next to the code it configures (policies/config.py: model, cloud; envs/config.py: task;
rewards/config.py: reward; settings/: rl, train, sft, dpo and the composition ``Config`` with ``load_config``;
envs/lsrp/config.py: lsrp).  A field typed ``Literal["a", "b"]`` has those choices: OmegaConf rejects any other
value when it merges, ``Section.validate`` checks them again on the final object, and ``--help`` lists them.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import field, fields
from functools import cache


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def option(default, help: str, **kw):
    """A dataclass field with help text (``metadata['help']``), as TRL writes them."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@cache
def field_types(cls) -> dict[str, object]:
    """The resolved annotations of a dataclass (``from __future__ import annotations`` leaves them as strings)."""
    return typing.get_type_hints(cls)


def choices_of(cls, name: str) -> tuple | None:
    """The allowed values of field ``name`` when it is typed ``Literal[...]``, else None."""
    t = field_types(cls).get(name)
    return typing.get_args(t) if typing.get_origin(t) is typing.Literal else None


def type_name(cls, name: str) -> str:
    """The field's type as ``--help`` shows it: ``str`` for a ``Literal`` of strings, ``Optional[str]``..."""
    t = field_types(cls)[name]
    if typing.get_origin(t) is typing.Literal:
        return type(typing.get_args(t)[0]).__name__
    written = next(f.type for f in fields(cls) if f.name == name)  # the annotation as written
    return written if isinstance(written, str) else getattr(t, "__name__", str(t).replace("typing.", ""))


class Section:
    """A config section (a dataclass subclassing this): ``validate`` checks the ``Literal`` choices, then ``check``,
    the section's own rules.  Rules that need two sections live in the composition root (settings/)."""

    section: typing.ClassVar[str] = ""  # the section's name in the composition: model, cloud, rl...

    def validate(self) -> None:
        for f in fields(self):
            allowed = choices_of(type(self), f.name)
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{self.section}.{f.name}={value!r} is not one of {', '.join(map(str, allowed))}.")
        self.check()

    def check(self) -> None:
        """The section's own rules; raise ``ConfigError`` naming the key and the fix."""

    def require_finite(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(
                    f"{self.section}.{name}={value} must be a finite number: a NaN or inf there makes every "
                    "reward or update NaN."
                )


# what an API key looks like, as opposed to the NAME of the variable that holds one
KEY_PREFIXES = (
    "sk-",
    "sk_",
    "pk-",
    "rk-",
    "hf_",
    "gsk_",
    "xai-",
    "AIza",
    "ghp_",
    "github_pat_",
    "glpat-",
    "nvapi-",
    "r8_",
)  # case matters: HF_TOKEN is a name
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def may_be_secret(value: str) -> bool:
    """A known key prefix, or a long token mixing letters and digits: not to be repeated in an error message."""
    v = value.strip()
    return v.startswith(KEY_PREFIXES) or (
        len(v) >= 20 and " " not in v and any(c.isdigit() for c in v) and any(c.isalpha() for c in v)
    )


def looks_like_a_key(value: str) -> bool:
    """True unless ``value`` can be an environment variable's name: a known key prefix, characters a name cannot have,
    or a long run of letters and digits with no underscore (names are words joined by ``_``, keys are random)."""
    if value.startswith(KEY_PREFIXES) or (may_be_secret(value) and "_" not in value.strip("_")):
        return True
    return not _ENV_NAME.fullmatch(value)


def stray_arguments_error(words: list[str], example: str = "rl.budget=0.3") -> str | None:
    """The one-line error for command-line words that are neither a known option nor a ``key=value`` override
    (what ``argparse.parse_known_args`` leaves over), or None when every word is an override."""
    stray = [w for w in words if "=" not in w or w.startswith("-")]
    if not stray:
        return None
    return f"error: unrecognised arguments {stray}; options are listed by --help, config overrides look like {example}"
