"""Stack files on the controller: render `templates/stacks/NAME.yml.j2` with strict undefined variables,
then check the result before anything is uploaded. Errors name the file and the line or key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

TOP_LEVEL_KEYS = {"version", "name", "services", "networks", "volumes", "secrets", "configs"}


class StackError(ValueError):
    """A stack file problem: the message names the file and the line or key."""


def render(template: Path, context: dict[str, Any]) -> str:
    """The template rendered; an undefined variable or a template syntax error is a StackError."""
    if not template.is_file():
        raise StackError(f"{template}: no such stack template")
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML
    )
    try:
        return environment.get_template(template.name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise StackError(f"{template}:{exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise StackError(f"{template}:{_template_line(exc, template)}: {exc.message}") from None


def _template_line(exc: Exception, template: Path) -> str:
    """The template line an exception was raised at, from its traceback."""
    traceback = exc.__traceback__
    line = "?"
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == str(template) or traceback.tb_frame.f_globals.get(
            "__jinja_template__"
        ):
            line = str(traceback.tb_lineno)
        traceback = traceback.tb_next
    return line


def check(text: str, source: str) -> dict[str, Any]:
    """Parse a rendered stack file and check it: valid YAML, known top-level keys, a `services` map, every
    service with an image. Returns the parsed stack."""
    try:
        stack = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}" if mark else "?"
        raise StackError(f"{source}: rendered YAML is invalid at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise StackError(f"{source}: rendered YAML is invalid: {exc}") from None
    if not isinstance(stack, dict):
        raise StackError(f"{source}: a stack file must be a mapping with a `services` key")
    unknown = sorted(k for k in stack if k not in TOP_LEVEL_KEYS and not str(k).startswith("x-"))
    if unknown:
        raise StackError(f"{source}: unknown top-level key(s) {', '.join(map(str, unknown))} "
                         f"(known: {', '.join(sorted(TOP_LEVEL_KEYS))}, x-*)")  # fmt: skip
    services = stack.get("services")
    if not isinstance(services, dict) or not services:
        raise StackError(f"{source}: `services` must be a non-empty map of services")
    for name, service in services.items():
        if not isinstance(service, dict) or not service.get("image"):
            raise StackError(f"{source}: service {name!r} has no image")
    return stack


def stack_images(stack: dict[str, Any]) -> list[str]:
    return sorted({service["image"] for service in stack["services"].values()})
