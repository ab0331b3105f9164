"""Progress on stderr: a bar over the items of a job, and one within the item (per running node, from
the server's websocket events)."""
import sys
import threading
import time

_LOCK = threading.Lock()  # one writer at a time on the terminal (several servers report at once)


def say(*lines):
    """Lines for people, on stderr, printed above any progress bar."""
    from tqdm import tqdm
    with _LOCK:
        for line in lines:
            tqdm.write(str(line), file=sys.stderr)
        sys.stderr.flush()


class NodeProgress:
    """Turns websocket events into one progress bar per running node. `position` stacks the bars of
    several servers; `prefix` (e.g. the item's name) goes before the node's name; `verbose` also
    prints a line when a node starts and which nodes came from the cache."""

    def __init__(self, graph, enabled=True, position=0, prefix="", verbose=True):
        self.graph = graph
        self.enabled = enabled
        self.position = position
        self.prefix = prefix
        self.verbose = verbose
        self.bar = None
        self.node = None
        self.started = time.time()

    def _label(self, nid):
        node = self.graph.get(str(nid), {})
        title = node.get("_meta", {}).get("title") or node.get("class_type", "?")
        return f"{self.prefix}{title} [{nid}]"

    def _close(self):
        if self.bar is not None:
            with _LOCK:
                self.bar.close()
            self.bar = None

    def _bar(self, nid, total):
        from tqdm import tqdm
        if self.bar is None or self.bar.desc != self._label(nid):
            self._close()
            with _LOCK:
                self.bar = tqdm(total=total, desc=self._label(nid), file=sys.stderr, leave=self.verbose,
                                unit="step", dynamic_ncols=True, position=self.position)
        return self.bar

    def __call__(self, kind, data):
        if not self.enabled:
            return
        if kind == "execution_start":
            self.started = time.time()
        if kind == "execution_cached" and data.get("nodes") and self.verbose:
            say(f"  cached: {', '.join(self._label(n) for n in data['nodes'])}")
        elif kind == "executing":
            self._close()
            self.node = data.get("node")
            if self.node is not None and self.verbose:
                say(f"  running {self._label(self.node)}  (at {time.time() - self.started:.1f} s)")
        elif kind == "progress":
            bar = self._bar(data.get("node") or self.node, data.get("max"))
            with _LOCK:
                bar.total = data.get("max")
                bar.n = data.get("value", 0)
                bar.refresh()
        elif kind in ("execution_error", "execution_interrupted", "execution_success"):
            self._close()

    def close(self):
        self._close()


class ItemProgress:
    """The bar over the items of a job: done, failed and skipped so far."""

    def __init__(self, total, enabled=True):
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.bar = None
        if enabled and total > 1:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="items", unit="item", file=sys.stderr, position=0,
                            dynamic_ncols=True)

    def count(self, what):
        with _LOCK:
            self.counts[what] = self.counts.get(what, 0) + 1
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix({k: v for k, v in self.counts.items() if v}, refresh=True)

    def close(self):
        if self.bar is not None:
            with _LOCK:
                self.bar.close()
