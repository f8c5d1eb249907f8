"""The interface every anomaly localizer implements, and the method registry."""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.registry import Entry, Registry, RegistryError

logger = logging.getLogger(__name__)


def _adopt_registration(entry: Entry[type[Method]]) -> None:
    """Give a method class its registered name and description unless it states its own.

    A class that states another name than the one it is registered under is refused, since
    reports, errors and the run store would then call one method by two names.
    """
    cls = entry.obj
    if not cls.name:
        cls.name = entry.name
    elif cls.name != entry.name:
        message = (
            f"method class {entry.origin} says name={cls.name!r} but is registered as "
            f"{entry.name!r}; drop the class attribute or use the same name"
        )
        raise RegistryError(message)
    if not cls.description:
        cls.description = entry.description


METHODS: Registry[type[Method]] = Registry(
    "method", "defectbench.methods", "methods", on_add=_adopt_registration
)

ProgressCallback = Callable[[int, int, str], None]
"""``progress(completed, total, description)``; called by long steps inside ``fit``."""


def _no_progress(completed: int, total: int, description: str) -> None:
    return None


@dataclass
class FitContext:
    """What the harness hands a method when it trains.

    Attributes:
        device: Torch device to train and predict on.
        seed: Seed for every random draw the method makes.
        profile: Name of the schedule (``quick``, ``cpu``, ``paper``, ...).
        scratch_dir: Folder the method owns for checkpoints; a resumed run passes the
            same folder again, so a method that finds a checkpoint there continues from it.
        progress: Callback for progress bars.
        class_name: The dataset class being trained (``carpet``, ...), for methods whose
            original code sets hyper-parameters per class; ``None`` when unknown.
    """

    device: torch.device
    seed: int
    profile: str
    scratch_dir: Path
    progress: ProgressCallback = field(default=_no_progress)
    class_name: str | None = None


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none."""


class Method(ABC):
    """Base class of anomaly localizers.

    Subclasses set the class attributes, may define a frozen dataclass ``Options`` whose
    fields are the method's user-settable options (``ours(components=G.S)`` on the CLI),
    and implement :meth:`fit`, :meth:`predict`, :meth:`save` and :meth:`load`.

    Images are always ``B x 3 x H x W`` float tensors in [0, 1] (already perturbed by the
    harness where a setting applies); maps are ``B x H x W`` float tensors, finite, higher
    meaning more defective. A method may work at another resolution internally; the
    harness resizes maps to the evaluation resolution.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    needs_pretrained: ClassVar[bool] = False
    profiles: ClassVar[tuple[str, ...]] = ("quick", "paper")
    Options: ClassVar[type] = NoOptions

    def __init__(self, profile: str = "quick", options: Any | None = None) -> None:
        if profile not in self.profiles:
            message = (
                f"method {self.name!r} has no profile {profile!r}; "
                f"expected one of {', '.join(self.profiles)}"
            )
            raise ValueError(message)
        self.profile = profile
        self.options = options if options is not None else self.Options()
        self.device = torch.device("cpu")

    @abstractmethod
    def fit(self, normal_images: torch.Tensor, context: FitContext) -> None:
        """Train on normal images ``N x 3 x H x W`` in [0, 1]."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Return anomaly maps ``B x H' x W'`` for images ``B x 3 x H x W`` in [0, 1]."""

    @property
    def native_threshold(self) -> float | None:
        """The method's own decision boundary on its map values, or ``None``."""
        return None

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write everything :meth:`load` needs into ``directory`` (which exists)."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore a model written by :meth:`save`."""

    def describe(self) -> dict[str, Any]:
        """Facts for the report: backbone, whether its weights were pretrained, notes.

        Keys used by the report: ``backbone`` (str), ``pretrained`` (bool or None when
        no backbone), ``weights`` (where weights came from), ``note`` (str).
        """
        return {}

    def to(self, device: torch.device) -> Method:
        """Move the model to ``device``; subclasses with modules extend this."""
        self.device = device
        return self


# --- method specifications: ``name`` or ``name(key=value,...)`` -----------------------

_SPEC = re.compile(r"^\s*([A-Za-z_][\w\-]*)\s*(?:\((.*)\))?\s*$")


@dataclass(frozen=True)
class MethodSpec:
    """A method name with option overrides, as a user writes it on the command line."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """Stable text form, used as the run-store folder and the report row label."""
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}({inner})"

    def build(self, profile: str) -> Method:
        """Instantiate the method with typed options."""
        cls = METHODS.get(self.name)
        options = parse_options(cls, dict(self.options))
        return cls(profile=profile, options=options)


def split_method_list(text: str) -> list[str]:
    """Split ``"a,b(x=1,y=2),c"`` on the commas that are outside parentheses."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in method list {text!r}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ValueError(f"unbalanced '(' in method list {text!r}")
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_method_spec(text: str) -> MethodSpec:
    """Parse ``name`` or ``name(key=value,...)`` and resolve aliases to canonical names."""
    match = _SPEC.match(text)
    if match is None:
        raise ValueError(f"cannot read method {text!r}; expected name or name(key=value,...)")
    name = METHODS.entry(match.group(1)).name
    options: list[tuple[str, str]] = []
    if match.group(2):
        for item in match.group(2).split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise ValueError(f"option {item.strip()!r} of method {text!r} needs key=value")
            key, value = (part.strip() for part in item.split("=", 1))
            options.append((key, value))
    spec = MethodSpec(name, tuple(sorted(options)))
    parse_options(METHODS.get(name), dict(spec.options))  # validate early
    return spec


def parse_options(cls: type[Method], raw: dict[str, str]) -> Any:
    """Turn ``{"key": "text"}`` into the method's ``Options`` dataclass, typed."""
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    hints = typing.get_type_hints(cls.Options)
    values: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            message = f"method {cls.name!r} has no option {key!r}; valid options: {valid}"
            raise ValueError(message)
        values[key] = _convert(text, hints[key], f"{cls.name}({key}=...)")
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid options for method {cls.name!r}: {error}") from error


def _convert(text: str, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected true/false, got {text!r}")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError as error:
            raise ValueError(f"{where}: expected {hint.__name__}, got {text!r}") from error
    return text
