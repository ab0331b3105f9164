"""A TCP relay in front of a real ComfyUI server that a test turns faulty mid-job.

    proxy = FaultyProxy(server_url)      # proxy.url relays every byte, HTTP and websocket alike
    proxy.fault("stall")                 # from now on nothing is relayed; connections stay open, silent
    proxy.fault("garbage")               # every HTTP request is answered with bytes that are not HTTP, and
                                         # every websocket gets a text frame that is not JSON
    proxy.fault("die")                   # every connection is closed and new ones are refused
    proxy.close()

The server behind it is untouched: what the client sees is exactly what a stalled, broken or dead server
would show it.
"""
import socket
import threading
import time
from urllib.parse import urlparse

GARBAGE_HTTP = b"\x00\xff<html>this is not HTTP</html>\r\n\r\n"
GARBAGE_TEXT = b"<html>this is not JSON</html>"


def _ws_text_frame(payload):
    """A server-to-client websocket text frame (unmasked)."""
    assert len(payload) < 126
    return bytes([0x81, len(payload)]) + payload


class _Pair:
    def __init__(self, client, upstream):
        self.client, self.upstream = client, upstream
        self.websocket = False
        self.lock = threading.Lock()
        self.closed = False

    def close(self):
        self.closed = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class FaultyProxy:
    def __init__(self, target_url):
        target = urlparse(target_url)
        self.target = (target.hostname, target.port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.mode = "pass"
        self.pairs, self.held = [], []
        self.lock = threading.Lock()
        self.faulted_at = None
        threading.Thread(target=self._accept, daemon=True).start()

    def fault(self, mode):
        assert mode in ("stall", "garbage", "die")
        with self.lock:
            self.mode, self.faulted_at = mode, time.monotonic()
            pairs = list(self.pairs)
        if mode == "die":
            self.listener.close()
            for pair in pairs:
                pair.close()
        elif mode == "garbage":
            for pair in pairs:
                self._garble(pair)

    def close(self):
        with self.lock:
            self.mode = "closed"
            pairs, held = list(self.pairs), list(self.held)
        try:
            self.listener.close()
        except OSError:
            pass
        for pair in pairs:
            pair.close()
        for s in held:
            s.close()

    # --- inside ---
    def _garble(self, pair):
        with pair.lock:
            try:
                pair.client.sendall(_ws_text_frame(GARBAGE_TEXT) if pair.websocket else GARBAGE_HTTP)
            except OSError:
                pass
        if not pair.websocket:
            pair.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            mode = self.mode
            if mode in ("die", "closed"):
                client.close()
            elif mode == "stall":
                with self.lock:
                    self.held.append(client)  # accepted, never answered
            elif mode == "garbage":
                threading.Thread(target=self._answer_garbage, args=(client,), daemon=True).start()
            else:
                try:
                    upstream = socket.create_connection(self.target, timeout=10)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
                pair = _Pair(client, upstream)
                with self.lock:
                    self.pairs.append(pair)
                threading.Thread(target=self._pump, args=(pair, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(pair, False), daemon=True).start()

    def _answer_garbage(self, client):
        try:
            client.settimeout(10)
            client.recv(65536)
            client.sendall(GARBAGE_HTTP)
        except OSError:
            pass
        finally:
            client.close()

    def _pump(self, pair, to_server):
        src, dst = (pair.client, pair.upstream) if to_server else (pair.upstream, pair.client)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_server and b"upgrade: websocket" in data[:2048].lower():
                    pair.websocket = True
                while self.mode == "stall":
                    time.sleep(0.05)  # held: the client hears nothing more
                if self.mode != "pass":
                    return
                with pair.lock:
                    if pair.closed:
                        return
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            if self.mode == "pass":
                pair.close()
