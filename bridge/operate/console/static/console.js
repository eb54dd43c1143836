// The event list's live updates: every few seconds, ask for events newer than the newest row
// shown (with the same filters) and add them at the top. Rows are built from text nodes only.
"use strict";
(function () {
  const table = document.getElementById("events");
  if (!table || table.dataset.live !== "1") return;
  const body = table.tBodies[0];
  const status = document.getElementById("live-status");
  function newest() {
    const row = body.querySelector("tr[data-id]");
    return row ? row.dataset.id : "";
  }
  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }
  async function poll() {
    const params = new URLSearchParams(window.location.search);
    params.delete("cursor");
    const after = newest();
    if (after) params.set("after", after);
    try {
      const answer = await fetch("/console/events/feed?" + params.toString(),
                                 {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (answer.redirected || !answer.ok) return;
      const data = await answer.json();
      const empty = body.querySelector("tr.empty");
      if (empty && data.events.length) empty.remove();
      for (const e of data.events.slice().reverse()) {
        if (body.querySelector(`tr[data-id="${CSS.escape(e.id)}"]`)) continue;
        const row = document.createElement("tr");
        row.dataset.id = e.id;
        row.className = "new";
        const link = document.createElement("a");
        link.href = "/console/events/" + encodeURIComponent(e.id);
        link.textContent = e.received_at;
        cell(row, "").appendChild(link);
        cell(row, e.source);
        cell(row, e.event_type);
        const state = document.createElement("span");
        state.className = "state " + e.state;
        state.textContent = e.state;
        cell(row, "").appendChild(state);
        const flows = cell(row, "");
        for (const w of e.workflows ? e.workflows.split(",") : []) {
          const badge = document.createElement("span");
          badge.className = "state " + w;
          badge.textContent = w;
          flows.appendChild(badge);
          flows.appendChild(document.createTextNode(" "));
        }
        cell(row, e.idempotency_key).className = "key";
        body.insertBefore(row, body.firstChild);
      }
      if (data.events.length && status) status.textContent = data.events.length + " new event(s)";
    } catch (err) {
      // offline for a moment: the next poll tries again
    }
  }
  setInterval(poll, 2000);
})();
