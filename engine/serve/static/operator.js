// Live rows for the operator's view: each server-sent `session` event carries one row's cells as
// plain text; they are set as text, never as HTML.
const source = new EventSource("/sessions/live");
source.addEventListener("session", (e) => {
  const { id, cells } = JSON.parse(e.data);
  const detail = document.querySelector(`dl[data-id="${CSS.escape(id)}"]`);
  if (detail) {
    for (const [key, text] of Object.entries(cells)) {
      const dd = detail.querySelector(`dd[data-key="${key}"]`);
      if (dd) dd.textContent = text;
    }
    if (cells.outcome !== "running" && !document.querySelector("img.timeline")) setTimeout(() => location.reload(), 500);
    return;
  }
  const body = document.querySelector("#sessions tbody");
  if (!body) return;
  let row = body.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.id = id;
    for (const key of Object.keys(cells)) {
      const td = document.createElement("td");
      td.dataset.key = key;
      row.append(td);
    }
    body.prepend(row);
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
  }
  for (const [key, text] of Object.entries(cells)) {
    const td = row.querySelector(`td[data-key="${key}"]`);
    if (!td) continue;
    if (key === "id") {
      const a = document.createElement("a");
      a.href = `/sessions/${encodeURIComponent(id)}`;
      a.textContent = text;
      td.replaceChildren(a);
    } else {
      td.textContent = text;
    }
  }
});

