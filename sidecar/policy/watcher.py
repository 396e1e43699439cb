"""Hot reload: any filesystem event in the policy folder triggers a re-read.

watchfiles' default filter and debounce are wrong for us: ConfigMap updates happen in
`..`-prefixed folders that the default filter may skip, and its 1.6 s debounce is slow.
Events are only a hint: `PolicyHolder.reload` compares content hashes, so a storm of events
or an event for an unrelated file costs one folder read. A periodic re-read covers the
cases inotify cannot see (the folder itself replaced, network filesystems).

The watcher must outlive anything the folder does: a reload never raises, a watch that
fails falls back to polling, and `/status` says what the watcher is doing (`watcher`),
including that it stopped, so hot reload can never die unseen.
"""

from __future__ import annotations

import asyncio
import logging

from watchfiles import awatch

from sidecar.policy.holder import PolicyHolder

log = logging.getLogger("sidecar.policy")


async def watch(holder: PolicyHolder, stop: asyncio.Event, *, rescan: float = 5.0) -> None:
    try:
        while not stop.is_set():
            holder.watcher = "watching"
            try:
                async for _ in awatch(
                    holder.folder,
                    watch_filter=None,
                    debounce=100,
                    step=20,
                    stop_event=stop,
                    rust_timeout=int(rescan * 1000),
                    yield_on_timeout=True,
                    recursive=True,
                ):
                    await holder.reload()
            except Exception as exc:
                # The folder is gone (or never was), or inotify refused: poll until it is back.
                holder.watcher = f"polling every {rescan:.0f}s ({type(exc).__name__})"
                log.warning("cannot watch %s (%s); polling every %.0fs", holder.folder, exc, rescan)
                try:
                    await asyncio.wait_for(stop.wait(), rescan)
                except TimeoutError:
                    await holder.reload()
    finally:
        holder.watcher = "stopped"
        if not stop.is_set():
            log.error("policy watcher stopped: policy changes are no longer picked up")
