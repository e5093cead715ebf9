#!/usr/bin/python3
"""tests/integration/panel.py - drives headless Chromium (Debian's
chromium + chromedriver, through python3-selenium) for panel.sh.

Started once (in the namespace that reaches the nodes); reads one JSON
command a line on stdin and answers one JSON line on stdout, so the shell
script can act on the cluster (kill -9, promote) while one page stays open
and refreshes itself:

  {"cmd": "open", "url": U}                 load U; wait for the first render
  {"cmd": "rows"}                           the nodes table now
  {"cmd": "wait", "what": W, "deadline": S, "status": URL, ...}
        poll the DOM every 100 ms until W holds or S seconds pass; meanwhile
        also fetch URL (the node's /status) to learn when the daemon itself
        first said so. W: "count" (n rows, all state A), "state" (row name
        in state), "master" (row name has role master), "join" (join line
        shown or not: "shown"), "event" (an event of kind for name),
        "gone" (no row for name).
        Answers ok, waited_ms, status_ms (when /status first held W, or
        null), rows, join, events.
  {"cmd": "shot", "path": P, "width": W, "height": H, "mobile": bool}
        screenshot of the whole page at that viewport width
        "repl" (n replication rows, n chart lines, snapshot progress shown).
  {"cmd": "console"}                        the browser's console entries
  {"cmd": "quit"}

`panel.py serve HOST PORT DIR` instead serves the daemon's own page files
(DIR/index.html, panel.css, panel.js, saved from a node) with the headers
in $PANEL_HEADERS, and DIR/status.json as /status with every member's
lag_seconds moving with the clock: a store's replication view, and hostile
names, without a store or a hostile node (node names are [A-Za-z0-9._-]).
"""
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROWS_JS = """
const out = [];
for (const tr of document.querySelectorAll('#nodes tbody tr')) {
  out.push({name: tr.getAttribute('data-name'),
            state: tr.getAttribute('data-state'),
            role: tr.getAttribute('data-role'),
            reason: tr.querySelector('td.reason').textContent,
            cells: Array.from(tr.cells).map(c => c.textContent)});
}
const join = document.getElementById('join-section').hidden ? null
           : document.getElementById('join').textContent;
const events = Array.from(document.querySelectorAll('#events li')).map(
  li => ({kind: li.getAttribute('data-kind'),
          text: li.textContent}));
const repl = Array.from(document.querySelectorAll('#repl tbody tr')).map(
  tr => Array.from(tr.cells).map(c => c.textContent));
const snap = document.getElementById('snapshot');
return {rows: out, join: join, events: events, repl: repl,
        snapshot: snap.hidden ? null
                  : document.getElementById('snap-text').textContent,
        chart_lines: document.querySelectorAll('#chart polyline').length,
        chart_points: Math.max(0, ...Array.from(document.querySelectorAll(
          '#chart polyline')).map(p => p.points.numberOfItems)),
        markup: document.querySelectorAll('main img, main script, main iframe, main b, main i').length,
        conn: document.getElementById('conn').textContent};
"""


def holds(what, args, rows, join, events, v=None):
    byname = {r["name"]: r for r in rows}
    if what == "count":
        return len(rows) == args["n"] and all(r["state"] == "A" for r in rows)
    if what == "gone":
        return args["name"] not in byname and len(rows) > 0
    if what == "state":
        r = byname.get(args["name"])
        return r is not None and r["state"] == args["state"] and \
            args.get("reason", "") in r["reason"]
    if what == "master":
        r = byname.get(args["name"])
        masters = [x for x in rows if x["role"] == "master"]
        return r is not None and r["role"] == "master" and len(masters) == 1
    if what == "join":
        return (join is not None) == (args["shown"])
    if what == "repl":
        return v is not None and len(v["repl"]) == args["n"] and \
            v["chart_lines"] == args["n"] and v["snapshot"] is not None and \
            v["chart_points"] >= args.get("points", 0)
    if what == "event":
        return any(e["kind"] == args["kind"] and args["name"] in e["text"]
                   for e in events)
    raise ValueError("unknown wait: " + what)


def status_rows(url):
    """the same view from the daemon's /status, in the DOM's shape"""
    with urllib.request.urlopen(url, timeout=3) as r:
        s = json.load(r)
    rows = [{"name": m["name"], "state": m["state"], "role": m["role"],
             "reason": m.get("reason", "")} for m in s.get("members", [])]
    events = [{"kind": e["kind"], "text": "%s %s (cid %s) %s" % (
        e["kind"], e["name"], e["cid"], e["detail"])}
        for e in s.get("events", [])]
    return rows, s.get("join_command"), events


def serve(host, port, root):
    import http.server

    extra = [l.split(": ", 1) for l in
             os.environ.get("PANEL_HEADERS", "").split("\n") if ": " in l]
    files = {"/": ("index.html", "text/html; charset=utf-8"),
             "/panel.css": ("panel.css", "text/css; charset=utf-8"),
             "/panel.js": ("panel.js", "text/javascript; charset=utf-8")}

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/status":
                with open(os.path.join(root, "status.json")) as f:
                    st = json.load(f)
                t = time.time()
                for i, m in enumerate(st.get("members", [])):
                    if "db" in m:
                        m["db"]["lag_seconds"] = round(
                            (i + 1) * (1.5 + (t % 7) / 2), 3)
                st["time"] = int(t)
                body, ctype = json.dumps(st).encode(), "application/json"
            elif path in files:
                with open(os.path.join(root, files[path][0]), "rb") as f:
                    body = f.read()
                ctype = files[path][1]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    http.server.ThreadingHTTPServer((host, port), H).serve_forever()


def main():
    # under the test's own temp dir (removed with it), else /tmp
    prof = tempfile.mkdtemp(prefix="pmgcm-chromium-",
                            dir=os.environ.get("PANEL_TMP") or None)
    os.environ["HOME"] = prof  # chromium writes its caches under $HOME
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", "--no-first-run",
              "--disable-extensions", "--disable-background-networking",
              "--user-data-dir=" + prof, "--window-size=1280,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    svc = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"),
                  log_path=os.environ.get("CHROMEDRIVER_LOG", os.devnull))
    drv = webdriver.Chrome(service=svc, options=opts)
    drv.set_page_load_timeout(30)
    drv.set_script_timeout(10)

    def answer(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    answer({"ok": True, "ready": True,
            "browser": drv.capabilities.get("browserVersion", "?")})
    for line in sys.stdin:
        try:
            c = json.loads(line)
            cmd = c["cmd"]
            if cmd == "quit":
                answer({"ok": True})
                break
            if cmd == "open":
                drv.get(c["url"])
                t0 = time.monotonic()
                v = drv.execute_script(ROWS_JS)
                while not v["rows"] and time.monotonic() - t0 < 15:
                    time.sleep(0.1)
                    v = drv.execute_script(ROWS_JS)
                answer({"ok": bool(v["rows"]), "title": drv.title, **v})
            elif cmd == "rows":
                answer({"ok": True, **drv.execute_script(ROWS_JS)})
            elif cmd == "wait":
                t0 = time.monotonic()
                status_ms = None
                ok = False
                while True:
                    now = time.monotonic()
                    if status_ms is None and c.get("status"):
                        try:
                            if holds(c["what"], c, *status_rows(c["status"])):
                                status_ms = int((now - t0) * 1000)
                        except OSError:
                            pass
                    v = drv.execute_script(ROWS_JS)
                    if holds(c["what"], c, v["rows"], v["join"], v["events"], v):
                        ok = True
                        break
                    if now - t0 > c["deadline"]:
                        break
                    time.sleep(0.1)
                answer({"ok": ok,
                        "waited_ms": int((time.monotonic() - t0) * 1000),
                        "status_ms": status_ms, **v})
            elif cmd == "shot":
                w, h = int(c["width"]), int(c["height"])
                mobile = bool(c.get("mobile", False))
                metrics = {"width": w, "height": h, "deviceScaleFactor": 1,
                           "mobile": mobile}
                drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    metrics)
                full = drv.execute_script(
                    "return Math.ceil(document.documentElement.scrollHeight)")
                metrics["height"] = max(h, min(int(full), 6000))
                drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    metrics)
                overflow = drv.execute_script(
                    "return document.documentElement.scrollWidth - "
                    "document.documentElement.clientWidth")
                ok = drv.save_screenshot(c["path"])
                drv.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
                answer({"ok": bool(ok), "path": c["path"],
                        "height": metrics["height"],
                        "overflow_x": int(overflow)})
            elif cmd == "console":
                answer({"ok": True, "log": drv.get_log("browser")})
            else:
                answer({"ok": False, "error": "unknown command " + cmd})
        except Exception as e:  # an answer for every line, whatever failed
            answer({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})
    drv.quit()
    shutil.rmtree(prof, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
