"""The Batch API of the test server: files (upload, content, list) and batches (create,
retrieve, cancel, list) for ``/v1/embeddings``, done in ``seconds`` instead of 24 hours.

A batch is ``in_progress`` from its creation and reaches its terminal state when it is
first looked at after ``BatchFaults.seconds``; then its output and error files are made
(each line embedded as ``/v1/embeddings`` would, its tokens billed once). Faults, as users
of batch tools have met them: shuffled output (always: order is never promised), error
lines (inputs holding a ``poison`` string), ``expire`` with part of the output,
``completed`` with no output file and everything in the error file, and a batch that fails
after its creation on the enqueued-token limit (``enqueued_tokens``).
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .vectors import server_vectors

if TYPE_CHECKING:
    from .server import EmbeddingServer


@dataclass
class BatchFaults:
    seconds: float = 0.5  # from creation to the terminal state
    expire: list[float] = field(default_factory=list)  # the next batches to end expire, this share of lines done
    no_output: int = 0  # the next batches to end: "completed", no output file, every line in the error file
    enqueued_tokens: int | None = None  # a batch taking the enqueued tokens over this fails after create
    slow_download: float = 0.0  # seconds to send a file's content (to kill a client mid-download)
    fail_lines: list[str] = field(default_factory=list)  # inputs containing one: a 500 line in the error file


def _page(items: list[dict[str, Any]], query: dict[str, str], *, default_limit: int, max_limit: int) -> tuple[int, bytes]:
    """One page of a list answer: the items after the one whose id is ``after``, at most
    ``limit``, with ``has_more`` and the first and last ids (a client pages on with ``after``)."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        limit = 0
    if not 1 <= limit <= max_limit:
        return 400, _batch_error(f"limit must be between 1 and {max_limit}", "invalid_value")
    after = query.get("after")
    ids = [item["id"] for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    page = items[start : start + limit]
    body = {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(items)}
    return 200, json.dumps(body).encode()


def _batch_error(message: str, code: str | None) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()


class BatchAPI:
    """Files and batches of one test server (thread-safe)."""

    def __init__(self, server: EmbeddingServer) -> None:
        self.server = server
        self.faults = BatchFaults()
        self.files: dict[str, dict[str, Any]] = {}
        self.content: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lines: dict[str, list[dict[str, Any]]] = {}
        self.billed_tokens = 0  # tokens of every line answered 200
        self.billed_lines: list[str] = []  # custom_id of every line billed
        self.uploads = 0
        self.creates = 0
        self._lock = threading.RLock()
        self._rng = random.Random(0)

    # -- files ---------------------------------------------------------------------------------
    def upload(self, content_type: str, body: bytes) -> tuple[int, bytes]:
        fields = _multipart(content_type, body)
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            return 400, _batch_error("a file and purpose=batch are required", None)
        filename, data = fields["file"]
        with self._lock:
            file_id = "file-" + uuid.uuid4().hex[:24]
            self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                   "filename": filename or "upload.jsonl", "purpose": "batch", "status": "processed"}
            self.content[file_id] = data
            self.uploads += 1
            answer = json.dumps(self.files[file_id]).encode()
        self.server.event("file_uploaded", {"file_id": file_id, "filename": filename})
        return 200, answer

    def list_files(self, query: dict[str, str]) -> tuple[int, bytes]:
        """``GET /v1/files``: newest first (``order=asc`` oldest), ``purpose``, and a cursor
        page (``after``, ``limit`` up to 10,000): https://platform.openai.com/docs/api-reference/files/list"""
        with self._lock:
            purpose = query.get("purpose")
            files = [f for f in self.files.values() if purpose is None or f["purpose"] == purpose]
            data = sorted(files, key=lambda f: f["created_at"], reverse=query.get("order", "desc") != "asc")
        return _page(data, query, default_limit=10_000, max_limit=10_000)

    def file_content(self, file_id: str) -> tuple[int, bytes]:
        with self._lock:
            data = self.content.get(file_id)
        if data is None:
            return 404, _batch_error(f"No such File object: {file_id}", None)
        self.server.event("file_content", {"file_id": file_id})
        return 200, data

    # -- batches -------------------------------------------------------------------------------
    def create(self, body: bytes) -> tuple[int, bytes]:
        try:
            req = json.loads(body)
            file_id, endpoint, window = req["input_file_id"], req["endpoint"], req["completion_window"]
        except (ValueError, KeyError, TypeError):
            return 400, _batch_error("input_file_id, endpoint and completion_window are required", None)
        if endpoint != "/v1/embeddings" or window != "24h":
            return 400, _batch_error("endpoint must be /v1/embeddings and completion_window 24h here", None)
        with self._lock:
            if file_id not in self.content:
                return 400, _batch_error(f"No such File object: {file_id}", None)
            try:
                lines = [json.loads(line) for line in self.content[file_id].splitlines() if line.strip()]
            except ValueError:
                return 400, _batch_error("the input file is not JSON lines", None)
            if len(lines) > 50_000:
                return 400, _batch_error("a batch holds at most 50,000 requests", None)
            batch_id = "batch_" + uuid.uuid4().hex[:24]
            now = time.time()
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": endpoint, "input_file_id": file_id,
                "completion_window": window, "status": "in_progress", "created_at": int(now),
                "in_progress_at": int(now), "output_file_id": None, "error_file_id": None, "errors": None,
                "metadata": req.get("metadata"), "_created": now,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            }
            self.lines[batch_id] = lines
            self.creates += 1
            answer = self._public(batch_id)
        self.server.event("batch_created", {"batch_id": batch_id})
        return 200, answer

    def retrieve(self, batch_id: str) -> tuple[int, bytes]:
        with self._lock:
            if batch_id not in self.batches:
                return 404, _batch_error(f"No such Batch object: {batch_id}", None)
            self._advance(batch_id)
            answer = self._public(batch_id)
        self.server.event("batch_retrieved", {"batch_id": batch_id})
        return 200, answer

    def cancel(self, batch_id: str) -> tuple[int, bytes]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _batch_error(f"No such Batch object: {batch_id}", None)
            self._advance(batch_id)
            if batch["status"] == "in_progress":
                batch["status"] = "cancelling"
            return 200, self._public(batch_id)

    def list_batches(self, query: dict[str, str]) -> tuple[int, bytes]:
        """``GET /v1/batches``: newest first, a cursor page (``after``, ``limit`` 1 to 100,
        default 20): https://platform.openai.com/docs/api-reference/batch/list"""
        with self._lock:
            for batch_id in self.batches:
                self._advance(batch_id)
            data = [json.loads(self._public(b)) for b in sorted(self.batches, key=lambda b: -self.batches[b]["_created"])]
        return _page(data, query, default_limit=20, max_limit=100)

    def _public(self, batch_id: str) -> bytes:
        return json.dumps({k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}).encode()

    # -- progress ------------------------------------------------------------------------------
    def _advance(self, batch_id: str) -> None:
        """Move a batch on by the clock (caller holds the lock)."""
        batch, faults = self.batches[batch_id], self.faults
        elapsed = time.time() - batch["_created"]
        if batch["status"] == "in_progress" and faults.enqueued_tokens is not None and "_checked" not in batch:
            batch["_checked"] = True
            enqueued = sum(self._tokens(b) for b, other in self.batches.items()
                           if other["status"] == "in_progress" and b != batch_id)
            if enqueued + self._tokens(batch_id) > faults.enqueued_tokens:
                batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [{
                    "code": "token_limit_exceeded", "line": None, "param": None,
                    "message": f"Enqueued token limit reached for text-embedding-3-small in organization org-test. "
                               f"Limit: {faults.enqueued_tokens:,} enqueued tokens."}]})
                return
        if batch["status"] == "cancelling":
            self._finish(batch_id, "cancelled", done=min(1.0, elapsed / max(faults.seconds, 1e-9)) / 2)
        elif batch["status"] == "in_progress" and elapsed >= faults.seconds:
            if faults.expire:
                self._finish(batch_id, "expired", done=faults.expire.pop(0))
            else:
                no_output = faults.no_output > 0
                faults.no_output -= no_output
                self._finish(batch_id, "completed", done=1.0, no_output=no_output)

    def _tokens(self, batch_id: str) -> int:
        enc = self.server._enc
        return sum(len(enc.encode_ordinary(x)) for line in self.lines[batch_id] for x in _inputs(line))

    def _finish(self, batch_id: str, status: str, *, done: float, no_output: bool = False) -> None:
        """Embed the first ``done`` share of the lines; write the output and error files."""
        batch, faults, lines = self.batches[batch_id], self.faults, self.lines[batch_id]
        n_done = round(len(lines) * done)
        output, errors = [], []
        for k, line in enumerate(lines):
            custom_id = line.get("custom_id")
            record: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id}
            if k >= n_done:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                message = f"This request was not run: the batch {status}."
                errors.append({**record, "response": None, "error": {"code": code, "message": message}})
                continue
            body = line.get("body") or {}
            texts = _inputs(line)
            poisoned = any(p in t for p in self.server.faults.poison for t in texts)
            failing = any(p in t for p in faults.fail_lines for t in texts)
            if poisoned or no_output or failing or not texts:
                status_code = 400 if poisoned or not texts else 500
                message = "'$.input' is invalid: input contains a forbidden sequence." if poisoned else \
                    "The server had an error while processing your request."
                errors.append({**record, "response": {"status_code": status_code, "request_id": uuid.uuid4().hex,
                                                      "body": json.loads(_batch_error(message, None))}, "error": None})
                continue
            model = body.get("model", "text-embedding-3-small")
            dim = body.get("dimensions") or self.server.models.get(model, 1536)
            vectors = server_vectors(model, dim, texts)
            tokens = sum(len(self.server._enc.encode_ordinary(t)) for t in texts)
            fmt = body.get("encoding_format")
            data = [{"object": "embedding", "index": i,
                     "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64"
                     else [float(x) for x in v]} for i, v in enumerate(vectors)]
            output.append({**record, "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": {
                "object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}}, "error": None})
            self.billed_tokens += tokens
            self.billed_lines.append(str(custom_id))
        self._rng.shuffle(output)  # the order of the output file is never promised
        self._rng.shuffle(errors)
        for kind, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = "file-" + uuid.uuid4().hex[:24]
                content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                       "filename": f"{batch_id}_{kind[:-8]}.jsonl", "purpose": "batch_output",
                                       "status": "processed"}
                self.content[file_id] = content
                batch[kind] = file_id
        now = int(time.time())
        batch.update(status=status, request_counts={"total": len(lines), "completed": len(output), "failed": len(errors)})
        batch[f"{status}_at"] = now


def _inputs(line: dict[str, Any]) -> list[str]:
    raw = (line.get("body") or {}).get("input")
    if isinstance(raw, str):
        return [raw] if raw else []
    return [x for x in raw if isinstance(x, str) and x] if isinstance(raw, list) else []


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return {}
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        filename = re.search(rb'filename="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = (filename.group(1).decode() if filename else None,
                                              data[:-2] if data.endswith(b"\r\n") else data)
    return fields
