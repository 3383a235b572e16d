"""Stack files on the controller: render `templates/stacks/NAME.yml.j2` with strict undefined variables,
then check the result before anything is uploaded: valid YAML, and valid against the Compose specification's
JSON schema (the copy check-jsonschema ships, validated by jsonschema), so a misspelt key anywhere in a
service stops the run. Errors name the file and the line or the key's path (`services.web.deploi`)."""

from __future__ import annotations

import difflib
import importlib.resources
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
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
    problems = schema_problems(stack)
    if problems:
        raise StackError(f"{source}: " + "; ".join(problems[:5]))
    for name, service in services.items():
        if not isinstance(service, dict) or not service.get("image"):
            raise StackError(f"{source}: service {name!r} has no image")
    return stack


def stack_images(stack: dict[str, Any]) -> list[str]:
    return sorted({service["image"] for service in stack["services"].values()})


@cache
def _validator() -> jsonschema.protocols.Validator:
    """The Compose specification's JSON schema, as the check-jsonschema package ships it."""
    schema = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    document = json.loads(schema.read_text())
    validator_class = jsonschema.validators.validator_for(document)
    return validator_class(document)


@cache
def _vocabulary() -> list[str]:
    """Every key the Compose specification names, anywhere: what a misspelt key is matched against."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            names.update(k for k in node.get("properties", {}) if isinstance(node.get("properties"), dict))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_validator().schema)
    return sorted(names)


def schema_problems(stack: dict[str, Any]) -> list[str]:
    """Where a parsed stack file breaks the Compose specification, each naming the key's path (a key that
    isn't one gets the closest that is)."""
    errors = sorted(_validator().iter_errors(stack), key=lambda e: [str(p) for p in e.absolute_path])
    paths = [[str(part) for part in error.absolute_path] for error in errors]
    problems = []
    for error, path in zip(errors, paths, strict=True):
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            patterns = list(error.schema.get("patternProperties", {}))
            unexpected = [str(k) for k in error.instance if k not in error.schema.get("properties", {})
                          and not any(re.search(p, str(k)) for p in patterns)]  # fmt: skip
        elif error.validator == "unevaluatedProperties":
            # A key whose value broke the schema counts as unevaluated too: its own error names it.
            named = re.findall(r"'([^']*)'", error.message.rpartition("(")[2])
            unexpected = [k for k in named if not any(other[: len(path) + 1] == [*path, k] for other in paths)]
            if any(len(other) > len(path) and other[: len(path)] == path for other in paths):
                unexpected = [k for k in unexpected if k not in _vocabulary()]  # a sibling's error cast doubt
        else:
            problems.append(f"{'.'.join(path) or 'the file'}: {_broken_rule(error)}")
            continue
        for key in unexpected:
            close = difflib.get_close_matches(key, _vocabulary(), n=1)
            hint = "" if not close else " (not at this place)" if close[0] == key else f" (did you mean {close[0]}?)"
            problems.append(f"{'.'.join([*path, key])}: not a key of the Compose specification{hint}")
    return problems


def _broken_rule(error: jsonschema.ValidationError) -> str:
    """What a value breaks, in words that never quote the value (it may be a secret)."""
    rule, expected = error.validator, error.validator_value
    if rule == "type":
        return f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}"
    if rule in ("enum", "const"):
        return f"must be one of {expected if isinstance(expected, list) else [expected]}"
    if rule == "required":
        return error.message
    if rule in ("oneOf", "anyOf"):
        return "has none of the forms the specification allows"
    return f"breaks the specification's rule {rule}: {expected}"
