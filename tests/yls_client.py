"""A minimal Language Server Protocol client for yaml-language-server: the diagnostics an editor
(VS Code with the YAML extension) shows for some files against a JSON Schema.

Usage: python tests/yls_client.py SCHEMA FILE... (with yaml-language-server on PATH, or its path in
$YAML_LANGUAGE_SERVER); prints one `file:line:col: message` per diagnostic, exits 1 if any.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue
from typing import Any


def diagnostics(server: str, schema: Path, files: list[Path], timeout: float = 60.0) -> dict[str, list[str]]:
    """{file: ["line:col: message", ...]} as yaml-language-server reports them, for each file."""
    command = [server, "--stdio"] if not server.endswith(".js") else ["node", server, "--stdio"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    inbox: Queue[dict[str, Any]] = Queue()
    threading.Thread(target=_read, args=(proc.stdout, inbox), daemon=True).start()
    settings = {"yaml": {"validate": True, "schemas": {schema.resolve().as_uri(): [str(f.resolve()) for f in files]},
                         "schemaStore": {"enable": False}, "yamlVersion": "1.2"}}

    def send(message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    try:
        send({"id": 1, "method": "initialize", "params": {"processId": os.getpid(), "rootUri": None,
                                                           "capabilities": {"workspace": {"configuration": True}}}})
        _wait(inbox, lambda m: m.get("id") == 1, timeout, send, settings)
        send({"method": "initialized", "params": {}})
        send({"method": "workspace/didChangeConfiguration", "params": {"settings": settings}})
        found: dict[str, list[str]] = {}
        for path in files:
            uri = path.resolve().as_uri()
            send({"method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": uri, "languageId": "yaml", "version": 1, "text": path.read_text()}}})
            message = _wait(inbox, lambda m, uri=uri: m.get("method") == "textDocument/publishDiagnostics"
                            and m["params"]["uri"] == uri and m["params"].get("version", 1) == 1, timeout, send,
                            settings)
            found[str(path)] = [f"{d['range']['start']['line'] + 1}:{d['range']['start']['character'] + 1}: "
                                f"{d['message']}" for d in message["params"]["diagnostics"]]
        return found
    finally:
        proc.kill()
        proc.wait()


def _read(stream: Any, inbox: "Queue[dict[str, Any]]") -> None:
    while True:
        headers: dict[str, str] = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        if not headers:
            return
        inbox.put(json.loads(stream.read(int(headers["content-length"]))))


def _wait(inbox: "Queue[dict[str, Any]]", wanted: Any, timeout: float, send: Any, settings: dict[str, Any]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except Empty:
            raise TimeoutError("yaml-language-server did not answer") from None
        if message.get("method") == "workspace/configuration":  # the server asks for its settings
            items = message["params"]["items"]
            send({"id": message["id"], "result": [settings.get(i.get("section", ""), settings) for i in items]})
        elif "id" in message and "method" in message:  # any other request: an empty answer
            send({"id": message["id"], "result": None})
        elif wanted(message):
            return message


if __name__ == "__main__":
    server = os.environ.get("YAML_LANGUAGE_SERVER") or shutil.which("yaml-language-server")
    if not server:
        sys.exit("yaml-language-server not found (npm install yaml-language-server)")
    result = diagnostics(server, Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    for file, lines in result.items():
        for line in lines:
            print(f"{file}:{line}")
        if not lines:
            print(f"{file}: ok")
    sys.exit(1 if any(result.values()) else 0)
