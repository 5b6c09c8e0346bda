"""The journal: a run's events on disk, in the model folder, until MLflow has them (see
:mod:`adseg.tracking`), and the sending of what journals hold."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from adseg.io import read_json, write_json, write_text
from adseg.log import logger
from adseg.tracking.store import RunGone, backing_off, note_failure, note_success, store_for

JOURNALS = "tracking"
# a run's system metrics are appended from a thread of their own (adseg.tracking.system)
_APPENDING = threading.Lock()


class Journal:
    """One run's events, kept on disk until MLflow has them.

    ``folder`` holds ``ref.json`` (what identifies the run), ``events.jsonl`` (one event per
    line, appended and fsynced), ``state.json`` (per store: the MLflow run id and how many
    events it has) and ``blobs/`` (artifacts waiting to be uploaded).
    """

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder)
        self.ref = read_json(self.dir / "ref.json")
        self._lock = FileLock(str(self.dir / ".lock"))

    @classmethod
    def create(cls, folder: Path, ref: dict) -> Journal:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "ref.json", ref)
        return cls(folder)

    @property
    def events_file(self) -> Path:
        return self.dir / "events.jsonl"

    def append(self, op: str, **data: Any) -> None:
        line = json.dumps({"op": op, "time": int(time.time() * 1000), **data}, allow_nan=True)
        with _APPENDING, open(self.events_file, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash stays a line of its own
                    line = "\n" + line
            f.write((line + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def metrics(self, values: dict[str, float], step: int = 0, system: bool = False) -> None:
        """Metrics at ``step``; ``system``: samples of the machine (:mod:`adseg.tracking.system`)
        with steps of their own, kept when an epoch is trained again."""
        clean = {k: float(v) for k, v in values.items() if v is not None}
        if clean:
            self.append("metrics", metrics=clean, step=step, **({"system": True} if system else {}))

    def next_system_step(self) -> int:
        """The step of the next system-metrics sample: a resumed run goes on counting."""
        steps = [e["step"] for e in self.events() if e["op"] == "metrics" and e.get("system")]
        return max(steps) + 1 if steps else 0

    def tags(self, tags: dict[str, Any]) -> None:
        self.append("tags", tags={k: str(v) for k, v in tags.items()})

    def status(self, status: str) -> None:
        self.append("status", status=status)

    def last_status(self) -> str | None:
        return next((e["status"] for e in reversed(self.events()) if e["op"] == "status"), None)

    def count_tag(self, key: str) -> int:
        """How many times tag ``key`` was set (an evaluation or summary counter)."""
        return sum(1 for e in self.events() if e["op"] == "tags" and key in e["tags"])

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Keep a copy of ``path`` (a hard link where possible) and log it when sending.

        The copy is taken now: a file rewritten later (a retrained checkpoint) does not change
        what this run gets.
        """
        path = Path(path)
        if not path.is_file():
            logger.warning("not logged to MLflow: %s does not exist", path)
            return
        blob = self.dir / "blobs" / uuid.uuid4().hex[:12] / path.name
        blob.parent.mkdir(parents=True)
        try:
            os.link(path, blob)
        except OSError:
            shutil.copy2(path, blob)
        self.append("artifact", blob=str(blob.relative_to(self.dir)), artifact_path=artifact_path)

    def config_artifact(self, config: dict) -> None:
        """The whole resolved config the run is tracked under, as ``config.yaml``."""
        import yaml

        path = self.dir / "config.yaml"
        write_text(path, yaml.safe_dump(config, sort_keys=False))
        self.artifact(path)

    def events(self) -> list[dict]:
        """The events in order; a line cut short by a crash is skipped (it stays skipped, so
        positions do not move)."""
        out = []
        if not self.events_file.is_file():
            return out
        for line in self.events_file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def discard_after(self, step: int) -> int:
        """Drop the metric events of steps after ``step`` that no store has yet; return how
        many. A job killed between an epoch's event and its checkpoint retrains that epoch
        on resume: its first, uncommitted event must not reach MLflow beside the second.
        System samples stay: the machine was busy all the same."""
        with self._lock, _APPENDING:
            events = self.events()
            path = self.dir / "state.json"
            stores = read_json(path) if path.is_file() else {}
            sent = max((s["sent"] for s in stores.values()), default=0)
            tail = events[sent:]
            keep = [e for e in tail if not _epoch_metrics_after(e, step)]
            if len(keep) == len(tail):
                return 0
            lines = [json.dumps(e, allow_nan=True) for e in events[:sent] + keep]
            write_text(self.events_file, "".join(line + "\n" for line in lines))
            return len(tail) - len(keep)

    def state(self, uri: str | None = None) -> dict:
        """``{"run_id", "sent"}`` of the run in store ``uri`` (default: the run's own)."""
        path = self.dir / "state.json"
        stores = read_json(path) if path.is_file() else {}
        return stores.get(uri or self.ref["uri"], {"run_id": None, "sent": 0})

    def _save_state(self, uri: str, state: dict) -> None:
        path = self.dir / "state.json"
        stores = read_json(path) if path.is_file() else {}
        write_json(path, stores | {uri: state})

    def pending(self, uri: str | None = None) -> int:
        """Events not yet in the run's store (or in store ``uri``)."""
        return len(self.events()) - self.state(uri)["sent"]

    def run_id(self, uri: str | None = None) -> str | None:
        return self.state(uri)["run_id"]

    def flush(self, force: bool = False, uri: str | None = None) -> int:
        """Send the events not sent yet; return how many are still pending.

        Never raises: when the store cannot be reached the events stay, and the first failure
        per store is reported once. Unforced, it does not wait for a store that failed lately
        nor for another process sending this journal. ``uri`` sends to another store than the
        run's own (the run is found or made there, and gets every event).
        """
        uri = uri or self.ref["uri"]
        if not force and backing_off(uri):
            return self.pending(uri)
        try:
            with self._lock.acquire(timeout=120 if force else 0):
                return self._send_pending(uri)
        except Timeout:
            return self.pending(uri)

    def _send_pending(self, uri: str) -> int:
        events, state = self.events(), self.state(uri)
        if state["sent"] >= len(events):
            return 0
        try:
            store = store_for(uri, self.ref["lock"])
            if state["run_id"] is None:
                state["run_id"] = store.resolve(self.ref)
                self._save_state(uri, state)
            while state["sent"] < len(events):
                try:
                    n = store.send(
                        state["run_id"], events[state["sent"] :], self.dir, uri != self.ref["uri"]
                    )
                except RunGone as gone:
                    if gone.deleted:
                        logger.warning(
                            "MLflow run %s (%s) was deleted; its %d remaining events are not sent",
                            state["run_id"],
                            self.ref["run_name"],
                            len(events) - state["sent"],
                        )
                        n = len(events) - state["sent"]
                    else:  # the store lost it (a new database): make the run anew, resend all
                        logger.warning(
                            "MLflow run %s is gone from %s; logging it anew", state["run_id"], uri
                        )
                        state = {"run_id": store.resolve(self.ref), "sent": 0}
                        n = 0
                state["sent"] += n
                self._save_state(uri, state)
        except Exception as err:  # noqa: BLE001 - any failure keeps the events for later
            note_failure(uri, err, self.dir)
        else:
            note_success(uri)
        return len(events) - state["sent"]


def _epoch_metrics_after(event: dict, step: int) -> bool:
    """Whether ``event`` holds metrics of an epoch after ``step`` (not system samples)."""
    return event["op"] == "metrics" and not event.get("system") and event.get("step", 0) > step


def current_journal(folder: str | Path) -> Journal | None:
    """The journal of the run a model folder (or scheme folder) currently belongs to."""
    pointer = Path(folder) / JOURNALS / "current"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return Journal(path) if (path / "ref.json").is_file() else None


def set_current(folder: Path, journal: Journal) -> None:
    """Make ``journal`` the run model folder ``folder`` belongs to (:func:`current_journal`)."""
    write_text(folder / JOURNALS / "current", journal.dir.name + "\n")


def journals_under(*paths: str | Path) -> list[Journal]:
    """Every journal in these folders (recursively), fold runs before parents."""
    found = {p.parent for root in paths for p in Path(root).rglob(f"{JOURNALS}/*/ref.json")}
    journals = [Journal(d) for d in sorted(found)]
    return sorted(journals, key=lambda j: j.ref["role"] == "parent")


def sync(paths: list[str | Path], uri: str | None = None) -> tuple[int, int, int]:
    """Send what the journals under ``paths`` hold; (journals, events sent, events pending).

    Once a store has failed in this sweep, its other journals are not tried again.
    """
    journals = journals_under(*paths)
    sent = pending = 0
    failed: set[str] = set()
    for journal in journals:
        target = uri or journal.ref["uri"]
        before = journal.pending(target)
        left = before if target in failed else journal.flush(force=True, uri=target)
        if left:
            failed.add(target)
        sent += before - left
        pending += left
    return len(journals), sent, pending
