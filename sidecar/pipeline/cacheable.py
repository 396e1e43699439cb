"""What the response cache may answer from and keep: the app's own controls, the policy's
eligibility rules, and which answers are safe to replay.

Tools: the risk in caching a request that offers tools is an answer that *calls* one (book,
send, pay): replayed, the action would be skipped. A plain-text answer to such a request
has no side effect to skip, so by default (`tools: text`) requests with tools are cacheable
and only answers with tool calls are not stored. `tools: always` (or `true`, its older
spelling) stores those too; a list of tool names stores calls to those tools only (read-only
lookups, say); `tools: false` never caches a request that offers tools.

Temperature: by default any temperature is cacheable (`any_temperature: true`): the key
holds the temperature, so a hit is an answer the model gave to this very request, drawn
from the same distribution a new call would draw from. What is lost is variety between
repeats (a "regenerate" button, several samples to vote on): such calls send
`x-sidecar-cache: refresh` or `bypass`, or the cache says `any_temperature: false`.

Each refusal has a reason, sent back in `x-sidecar-cache-reason` and counted in
`sidecar.cache.lookups`, so an app can tell its own bypass from a rule of the policy.
"""

from __future__ import annotations

from typing import Any

from sidecar.pipeline.context import RequestContext
from sidecar.policy.model import CachePolicy

# x-sidecar-cache values besides hit, semantic-hit and miss
BYPASS = "bypass"  # the app asked: x-sidecar-cache: bypass, or Cache-Control: no-store
INELIGIBLE = "ineligible"  # the cache's policy does not take this request
UNAVAILABLE = "unavailable"  # the cache's store could not be reached


def control(ctx: RequestContext) -> tuple[str, str | None]:
    """The app's cache control (bypass, refresh, only-if-cached or ""), and the reason
    when it is a bypass."""
    if "no-store" in (ctx.headers.get("cache-control") or "").lower():
        return BYPASS, "no-store"
    asked = (ctx.headers.get("x-sidecar-cache") or "").lower()
    return asked, "x-sidecar-cache" if asked == BYPASS else None


def ineligible(ctx: RequestContext, policy: CachePolicy) -> str | None:
    """Why the policy does not cache this request, or None."""
    body = ctx.client_body
    if policy.tools == "never" and body.get("tools"):
        return "tools"
    if not policy.any_temperature and body.get("temperature") != 0:
        return "temperature"
    return None


def unstorable(policy: CachePolicy, answer: Any) -> str | None:
    """Why a complete answer is not stored, or None: it calls a tool that is not safe
    to replay."""
    if policy.tools == "always":
        return None
    for choice in answer.get("choices") or ():
        message = choice.get("message") or {}
        calls = message.get("tool_calls") or ()
        if message.get("function_call"):  # the deprecated single-call form
            calls = [*calls, {"function": message["function_call"]}]
        for call in calls:
            name = (call.get("function") or {}).get("name")
            if name not in policy.replay_tools:
                return "tool-call"
    return None
