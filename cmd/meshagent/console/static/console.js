// meshagent console: the live tail of the audit log. Every value a record
// carries may come from a peer: it is only ever set as text (textContent),
// never parsed as HTML.
"use strict";
(function () {
  const body = document.getElementById("tail-body");
  const status = document.getElementById("tail-status");
  const dropped = document.getElementById("tail-dropped");
  const keep = 300; // rows shown
  const who = (name, id) => name || (id && id.length > 20 ? id.slice(0, 8) + "…" + id.slice(-6) : id || "");
  const setStatus = (state, text) => { status.dataset.state = state; status.textContent = text; };
  const es = new EventSource("/events");
  // Each (re)connection starts with the latest records: start afresh.
  es.onopen = () => { body.replaceChildren(); setStatus("live", "live"); };
  es.onerror = () => setStatus("down", es.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  es.onmessage = (e) => {
    const r = JSON.parse(e.data);
    const tr = document.createElement("tr");
    tr.className = "record";
    tr.dataset.decision = r.decision;
    const cells = [r.time, r.dir, r.kind, who(r.from_name, r.from), who(r.to_name, r.to), r.action, r.decision, r.reason, r.detail, r.cid];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = v == null ? "" : String(v);
      tr.appendChild(td);
    }
    tr.cells[3].title = r.from || "";
    tr.cells[4].title = r.to || "";
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > keep) body.deleteRow(-1);
  };
  es.addEventListener("dropped", (e) => {
    dropped.textContent = JSON.parse(e.data).dropped + " records dropped since this page opened.";
  });
})();
