"""What Slack refuses in Block Kit blocks and message attachments (the parts we use),
for the fake Slack's chat.postMessage, chat.update and incoming webhook."""

from __future__ import annotations

import re
from typing import Any

_COLOUR = re.compile(r"^#?[0-9A-Fa-f]{6}$")
_NAMED_COLOURS = {"good", "warning", "danger"}

_BLOCK_KEYS = {
    "header": {"text"},
    "section": {"text", "fields", "accessory"},
    "context": {"elements"},
    "actions": {"elements"},
    "divider": set(),
    "image": {"image_url", "alt_text", "title"},
}
_ATTACHMENT_KEYS = {"color", "blocks", "fallback", "text", "pretext", "title", "title_link",
                    "fields", "footer", "ts", "mrkdwn_in", "author_name", "author_link"}


def validate_blocks(blocks: Any, where: str = "blocks") -> list[str]:
    """What Slack would refuse in a list of layout blocks (the types we use)."""
    if not isinstance(blocks, list):
        return [f"{where} must be an array"]
    if len(blocks) > 50:
        return [f"{where} has more than 50 blocks"]
    problems: list[str] = []
    for i, block in enumerate(blocks):
        at = f"{where}[{i}]"
        if not isinstance(block, dict) or block.get("type") not in _BLOCK_KEYS:
            problems.append(f"{at}: unsupported block type")
            continue
        kind = block["type"]
        extra = set(block) - _BLOCK_KEYS[kind] - {"type", "block_id"}
        problems += [f"{at}: unknown field '{k}'" for k in sorted(extra)]
        if "block_id" in block and (not isinstance(block["block_id"], str)
                                    or len(block["block_id"]) > 255):
            problems.append(f"{at}.block_id: must be a string of at most 255 characters")
        if kind == "header":
            problems += _text_errors(block.get("text"), f"{at}.text", 150, plain_only=True)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append(f"{at}: a section needs text or fields")
            if "text" in block:
                problems += _text_errors(block["text"], f"{at}.text", 3000)
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    problems.append(f"{at}.fields: 1 to 10 text objects")
                else:
                    for j, item in enumerate(fields):
                        problems += _text_errors(item, f"{at}.fields[{j}]", 2000)
        elif kind == "context":
            problems += _elements(block.get("elements"), at, 10, _context_element)
        elif kind == "actions":
            problems += _elements(block.get("elements"), at, 25, _button)
            ids = [e.get("action_id") for e in block.get("elements") or []
                   if isinstance(e, dict) and e.get("action_id")]
            if len(ids) != len(set(ids)):
                problems.append(f"{at}: action_id values must be unique in a block")
        elif kind == "image" and not (block.get("image_url") and block.get("alt_text")):
            problems.append(f"{at}: an image needs image_url and alt_text")
    return problems


def validate_attachments(attachments: Any) -> list[str]:
    """What Slack would refuse in ``attachments`` (colour, known fields, nested blocks)."""
    if not isinstance(attachments, list):
        return ["attachments must be an array"]
    problems: list[str] = []
    for i, attachment in enumerate(attachments):
        at = f"attachments[{i}]"
        if not isinstance(attachment, dict):
            problems.append(f"{at}: must be an object")
            continue
        problems += [f"{at}: unknown field '{k}'"
                     for k in sorted(set(attachment) - _ATTACHMENT_KEYS)]
        colour = attachment.get("color")
        if colour is not None and colour not in _NAMED_COLOURS and not (
                isinstance(colour, str) and _COLOUR.match(colour)):
            problems.append(f"{at}.color: good, warning, danger or a hex colour")
        if "blocks" in attachment:
            problems += validate_blocks(attachment["blocks"], f"{at}.blocks")
    return problems


def _text_errors(obj: Any, at: str, limit: int, *, plain_only: bool = False) -> list[str]:
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in allowed:
        return [f"{at}: must be a {' or '.join(allowed)} text object"]
    problems = [f"{at}: unknown field '{k}'"
                for k in sorted(set(obj) - {"type", "text", "emoji", "verbatim"})]
    if obj["type"] == "plain_text" and "verbatim" in obj:
        problems.append(f"{at}: verbatim is for mrkdwn only")
    if obj["type"] == "mrkdwn" and "emoji" in obj:
        problems.append(f"{at}: emoji is for plain_text only")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        problems.append(f"{at}.text: must be a non-empty string")
    elif len(text) > limit:
        problems.append(f"{at}.text: longer than {limit} characters")
    return problems


def _elements(elements: Any, at: str, limit: int, check: Any) -> list[str]:
    if not isinstance(elements, list) or not 1 <= len(elements) <= limit:
        return [f"{at}.elements: 1 to {limit} elements"]
    problems: list[str] = []
    for j, element in enumerate(elements):
        problems += check(element, f"{at}.elements[{j}]")
    return problems


def _context_element(element: Any, at: str) -> list[str]:
    if isinstance(element, dict) and element.get("type") == "image":
        ok = element.get("image_url") and element.get("alt_text")
        return [] if ok else [f"{at}: an image needs image_url and alt_text"]
    return _text_errors(element, at, 3000)


def _button(element: Any, at: str) -> list[str]:
    if not isinstance(element, dict) or element.get("type") != "button":
        return [f"{at}: only buttons are supported here"]
    allowed = {"type", "text", "action_id", "url", "value", "style", "confirm",
               "accessibility_label"}
    problems = [f"{at}: unknown field '{k}'" for k in sorted(set(element) - allowed)]
    problems += _text_errors(element.get("text"), f"{at}.text", 75, plain_only=True)
    if "action_id" in element and (not isinstance(element["action_id"], str)
                                   or len(element["action_id"]) > 255):
        problems.append(f"{at}.action_id: a string of at most 255 characters")
    url = element.get("url")
    if url is not None and (not isinstance(url, str) or len(url) > 3000):
        problems.append(f"{at}.url: a string of at most 3000 characters")
    if element.get("style") not in (None, "primary", "danger"):
        problems.append(f"{at}.style: primary or danger")
    return problems
