"""The resumable generations log: append-only JSONL, one record per output, reused by settings.

A run appends one record per (system, item) output and flushes often; a rerun reads the
file back and reuses only records made with the same settings (core.fingerprint's hash per system,
see `system_setup`), so it generates only what is missing. A line cut short by an
interruption is skipped when reading, and ended before appending: otherwise the first new
record would be glued onto the half line, and both would be unreadable.

    read_records(path, key)   (key(record), record) for every whole record, in file order
    AppendLog(path)           write(record) / flush() / close(); opens on first use
    read_generations, GenerationsLog   evaluation.evaluate's log (generations.jsonl), by (system, id)
    LongdocLog                         evaluation.longdocs' log (longdoc_generations.jsonl),
                                       by (system, id, setup, text hash)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from core.config import Config
from core.fingerprint import GENERATIONS, resolved_runtime, settings_hash, value_hash

if TYPE_CHECKING:
    from evaluation.examples import Example
    from evaluation.longdocs_data import LongDoc

log = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"


def system_setup(cfg: Config, system: str) -> str:
    """core.fingerprint's settings hash of what a system's outputs are made from (resume reuses only matches).

    lead3 has no model: the sentence splitter is all. The model systems run in this process,
    so the dtype and device that `auto` resolves to here are part of it; only `adapter` reads the adapter.
    """
    from core.rouge import sentence_splitter_name

    if system == "lead3":
        return value_hash({"system": system, "splitter": sentence_splitter_name()})
    if system != "adapter":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapter=None))
    extra = {"system": system, "template": "chat" if system == "base_chat" else "prompt_template",
             "decoding": "generated-only-v2"}  # repetition control over generated tokens only
    return settings_hash(cfg, resolved=resolved_runtime(cfg.model), extra=extra, scope=GENERATIONS)


# --- reading and appending -------------------------------------------------------------


def read_records(path: Path, key: Callable[[dict], tuple]) -> Iterator[tuple[tuple, dict]]:
    """(key(record), record) for every whole record of the log (none if it does not exist).

    A line that is not JSON, or lacks what `key` reads, was cut short by an interruption: skipped.
    """
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                k = key(rec)
                hash(k)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            yield k, rec


def open_for_append(path: Path):
    """Append mode, after ending a line that a crash cut short.

    Otherwise the first new record is glued onto the half line, and both are unreadable.
    """
    file = path.open("a", encoding="utf-8")
    if file.tell() > 0:
        with path.open("rb") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                file.write("\n")
    return file


class AppendLog:
    """Append-only JSONL writer; the file is opened (`open_for_append`) on first use."""

    def __init__(self, path: Path):
        self.path = path
        self.file = None

    def open(self) -> "AppendLog":
        if self.file is None:
            self.file = open_for_append(self.path)
        return self

    def write(self, rec: dict) -> None:
        self.open().file.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# --- evaluation.evaluate's log: generations.jsonl, by (system, example id) -------------


def read_generations(path: Path, setups: dict[str, str]) -> dict[tuple[str, str], dict]:
    """(system, id) -> its latest successful record made with the current settings."""
    done: dict[tuple[str, str], dict] = {}
    stale = 0
    for key, rec in read_records(path, lambda r: (r["system"], r["id"])):
        if rec.get("setup") != setups.get(rec["system"]):
            stale += rec["system"] in setups
            continue
        if rec.get("error") is None:
            done[key] = rec
    if stale:
        log.warning("ignoring %d earlier outputs in %s made with other settings (or by an older version): "
                    "generating them again", stale, path)
    return done


class GenerationsLog:
    """Append-only JSONL, flushed after every batch so an interruption loses at most one."""

    def __init__(self, path: Path, setups: dict[str, str]):
        self.log = AppendLog(path).open()
        self.setups = setups
        self.records: dict[tuple[str, str], dict] = {}

    def add(self, system: str, ex: "Example", output: Optional[str] = None, error: Optional[str] = None) -> None:
        rec = {"system": system, "id": ex.id, "setup": self.setups[system], "output": output, "error": error}
        self.log.write(rec)
        self.records[(system, ex.id)] = rec

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self.log.close()


# --- evaluation.longdocs' log: longdoc_generations.jsonl, by (system, id, setup, text) ---


class LongdocLog:
    """Append-only JSONL of (system, doc) outputs; the latest line per settings + text wins.

    evaluation.longdocs' log (longdoc_generations.jsonl): the key is (system, id, setup,
    doc_sha), and every record is flushed as it is added.
    """

    def __init__(self, path: Path):
        self.path = path
        self.latest: dict[tuple, dict] = dict(read_records(path, _longdoc_key))
        self.log = AppendLog(path)

    def get(self, system: str, doc: "LongDoc", setup: str) -> Optional[dict]:
        return self.latest.get((system, doc.id, setup, doc.sha))

    def done(self, system: str, doc: "LongDoc", setup: str) -> bool:
        """Finished without error under these settings (failures are retried)."""
        rec = self.get(system, doc, setup)
        return rec is not None and rec.get("error") is None

    def add(self, system: str, doc: "LongDoc", setup: str, summary: Optional[str] = None,
            error: Optional[str] = None, **extra) -> dict:
        rec = {"system": system, "id": doc.id, "setup": setup, "doc_sha": doc.sha,
               "summary": summary, "error": error, **extra}
        self.log.write(rec)
        self.log.flush()  # one document at a time: an interruption loses nothing finished
        self.latest[(system, doc.id, setup, doc.sha)] = rec
        return rec

    def close(self) -> None:
        self.log.close()


def _longdoc_key(rec: dict) -> tuple:
    return (rec["system"], rec["id"], rec["setup"], rec["doc_sha"])
